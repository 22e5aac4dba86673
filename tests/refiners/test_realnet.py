"""RealNet decoder (bench/refiners/realnet.py): architecture, channel selection, loss, options, learning.

The contract every trained decoder shares (shapes, gradients, ablation, carry-over, determinism;
with and without the channel selection) is tested in test_trainable_contract.py.
"""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from refiner_inputs import CNN_LIKE, VIT_LIKE, bump_task, make_batch, make_refiner

make = partial(make_refiner, "realnet")


def test_architecture_follows_realnet():
    layers, _, size = VIT_LIKE  # 48 feature channels
    default = make(layers, size).net  # (256, 256) would not reduce 48 channels: all are kept
    assert default.selection is None and default.decoder1[0].layers[0].block[1].in_channels == 48 + 1
    selected = make(layers, size, selection=(8, 4)).net
    assert selected.selection == (8, 4) and selected.decoder1[0].layers[0].block[1].in_channels == 12 + 1
    assert len(selected.decoder1[0].layers) == 2
    assert [m.out_channels for m in selected.modules() if isinstance(m, torch.nn.Conv2d)][-5:] == [128, 32, 8, 4, 2]


def test_selection_keeps_the_top_channels_by_max_and_by_mean():
    layers, grid, size = VIT_LIKE
    net = make(layers, size, selection=(1, 1)).net
    net.eval()  # rank with the running statistics (mean 0, var 1 before any training): raw values
    x = torch.zeros(2, 48, grid, grid)
    x[0, 5, 3, 3] = 9.0  # image 0: largest spatial max in channel 5 ...
    x[0, 7] = 2.0  # ... largest spatial mean in channel 7
    x[1, 11, 0, 0] = 9.0
    x[1, 30] = 2.0
    picked = net.select(x)
    assert picked.shape == (2, 2, grid, grid)
    assert torch.equal(picked[0], x[0, [5, 7]]) and torch.equal(picked[1], x[1, [11, 30]])


def test_loss_is_realnets_two_class_cross_entropy():
    layers, grid, size = CNN_LIKE
    ref = make(layers, size)
    g = torch.Generator().manual_seed(0)
    two = 3 * torch.randn(2, 2, 3, 4, generator=g)  # normal / anomalous logits, as RealNet's head
    masks = (torch.rand(2, 1, 3, 4, generator=g) > 0.5).float()
    # RealNet's SegmentCrossEntropyLoss (utils/criterion_helper.py), written out
    log_p = torch.log_softmax(two, dim=1)
    expected = -(masks[:, 0] * log_p[:, 1] + (1 - masks[:, 0]) * log_p[:, 0]).mean()
    torch.testing.assert_close(ref.loss(two[:, 1:2] - two[:, 0:1], masks), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(expected, F.cross_entropy(two.flatten(2), masks.flatten(1).long()))
    # and refine's map is RealNet's anomaly score softmax(logits)[:, 1]
    batch = make_batch(2, size, layers, grid)
    ref.net.eval()
    with torch.no_grad():
        fused, a = ref.fuse_features(batch.features, (grid, grid)), ref.normalise(batch.coarse)
        two = ref.net(fused, a, (size, size))
    score = torch.softmax(two, dim=1)[:, 1]
    torch.testing.assert_close(ref.refine(batch.images, batch.features, batch.coarse), score, rtol=1e-5, atol=1e-6)


def test_bad_options_are_rejected():
    layers, _, size = CNN_LIKE  # unknown options: test_trainable_contract.py
    with pytest.raises(ValueError, match="selection"):
        make(layers, size, selection=(4,))
    with pytest.raises(ValueError, match="widths"):
        make(layers, size, widths=(8, 8))


def test_it_learns():
    ref = make(CNN_LIKE[0], 64, steps=40)  # default architecture
    losses = ref.fit(bump_task())
    assert len(losses) == 40
    # measured here: first-5 mean 0.61, last-5 mean 0.16
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
