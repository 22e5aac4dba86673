"""DeSTSeg decoder (bench/refiners/destseg.py): architecture, loss, options, learning.

The contract every trained decoder shares (shapes, gradients, ablation, carry-over, determinism)
is tested in test_trainable_contract.py.
"""
from __future__ import annotations

from functools import partial

import pytest
import torch

from refiner_inputs import CNN_LIKE, SMALL, bump_task, make_batch, make_refiner

make = partial(make_refiner, "destseg")


def test_architecture_follows_destseg():
    layers, _, size = CNN_LIKE
    net = make(layers, size).net
    assert len(net.res) == 2 and net.res[0].conv1.in_channels == 8 + 16 + 1  # features + coarse map
    aspp = net.head[0]
    assert [b[0].dilation for b in aspp.branches] == [(6, 6), (12, 12), (18, 18)]
    assert isinstance(net.head[0].pool[0], torch.nn.AdaptiveAvgPool2d)
    assert net.head[-1].out_channels == 1 and net.head[-1].kernel_size == (1, 1)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_loss_is_focal_gamma4_plus_l1_on_probabilities():
    ref = make(*CNN_LIKE[::2])
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 1, 3, 4, generator=g)
    masks = (torch.rand(2, 1, 3, 4, generator=g) > 0.5).float()
    # DeSTSeg's model/losses.py, written out: BCE on p, times (1 - p_t)^4, mean; plus mean |p - m|
    p = torch.sigmoid(logits)
    ce = -(masks * torch.log(p) + (1 - masks) * torch.log(1 - p))
    pt = p * masks + (1 - p) * (1 - masks)
    expected = (ce * (1 - pt) ** 4).mean() + (p - masks).abs().mean()
    torch.testing.assert_close(ref.loss(logits, masks), expected, rtol=1e-5, atol=1e-7)
    other = make(*CNN_LIKE[::2], focal_gamma=2.0, l1_weight=0.0)
    torch.testing.assert_close(other.loss(logits, masks), (ce * (1 - pt) ** 2).mean(), rtol=1e-5, atol=1e-7)


def test_options_and_batch_norm_limits():
    layers, grid, size = CNN_LIKE  # unknown options: test_trainable_contract.py
    with pytest.raises(ValueError, match="norm"):
        make(layers, size, norm="layer")
    one = make_batch(1, size, layers, grid)
    with pytest.raises(ValueError, match="at least 2 training images"):
        make(layers, size, steps=1, **SMALL["destseg"]).fit(one)
    assert len(make(layers, size, steps=1, norm="group", **SMALL["destseg"]).fit(one)) == 1


def test_it_learns():
    train = bump_task()
    ref = make(CNN_LIKE[0], 64, steps=40, width=64)  # narrower than the default 256, for speed
    losses = ref.fit(train)
    assert len(losses) == 40
    # measured here: first-5 mean 0.53, last-5 mean 0.18
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
