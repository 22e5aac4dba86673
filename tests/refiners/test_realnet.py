"""RealNet decoder (refiners/realnet.py): shapes, gradients, loss, selection, carry-over, determinism, learning."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.records import FeatureSet, RefineBatch
from bench.registry import REFINERS

SMALL = dict(widths=(16, 8, 8, 4))  # plumbing tests: capacity does not matter, speed does


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads under load run ~10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CNN_LIKE = ({"a": (8, 8), "b": (16, 4)}, 8, 64)  # layers (channels, side), grid, image size
VIT_LIKE = ({"l1": (24, 7), "l2": (24, 7)}, 7, 56)  # grid 7: not a power of two


def make_batch(n: int, size: int, layers: dict[str, tuple[int, int]], grid: int, seed: int = 0) -> RefineBatch:
    g = torch.Generator().manual_seed(seed)
    feats = FeatureSet({k: torch.randn(n, c, s, s, generator=g) for k, (c, s) in layers.items()}, torch.randn(n, 4, generator=g))
    masks = torch.zeros(n, size, size)
    masks[:, size // 4 : size // 2, size // 3 : size // 2] = 1
    coarse = 0.1 + 0.5 * torch.rand(n, grid, grid, generator=g)
    return RefineBatch(torch.randn(n, 3, size, size, generator=g), feats, coarse, masks)


def make(layers: dict[str, tuple[int, int]], size: int, **options):
    return REFINERS.create("realnet", channels={k: c for k, (c, _) in layers.items()}, image_size=size, **options)


@pytest.mark.parametrize("selection", [None, (8, 4)], ids=["all", "select"])
@pytest.mark.parametrize("layers,grid,size", [CNN_LIKE, VIT_LIKE], ids=["cnn", "vit"])
def test_refine_shape_and_range(layers, grid, size, selection):
    batch = make_batch(3, size, layers, grid)
    ref = make(layers, size, selection=selection)  # default widths
    assert ref.trainable and ref.num_parameters() == sum(p.numel() for p in ref.net.parameters())
    out = ref.refine(batch.images, batch.features, batch.coarse)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert torch.all((out >= 0) & (out <= 1)) and torch.isfinite(out).all()
    assert not out.requires_grad


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


@pytest.mark.parametrize("selection", [None, (8, 4)], ids=["all", "select"])
def test_gradients_reach_every_parameter(selection):
    layers, grid, size = VIT_LIKE
    batch = make_batch(2, size, layers, grid)
    ref = make(layers, size, selection=selection)
    ref.net.train()
    logits = ref.forward(batch.images, ref.fuse_features(batch.features, (grid, grid)), ref.normalise(batch.coarse))
    assert logits.shape == (2, 1, size, size)
    ref.loss(logits, batch.masks[:, None]).backward()
    missing = [n for n, p in ref.net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


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


def test_weights_and_optimiser_carry_over_between_fits():
    layers, grid, size = CNN_LIKE
    g1, g2 = make_batch(6, size, layers, grid, seed=1), make_batch(6, size, layers, grid, seed=2)
    ref = make(layers, size, steps=3, batch_size=4, **SMALL)
    ref.fit(g1)
    after_fit1 = {k: v.clone() for k, v in ref.net.state_dict().items()}
    seen = {}

    def capture(module, args):
        if not seen:
            seen.update({k: v.clone() for k, v in module.state_dict().items()})

    handle = ref.net.register_forward_pre_hook(capture)
    ref.fit(g2)
    handle.remove()
    assert all(torch.equal(seen[k], after_fit1[k]) for k in after_fit1)
    assert any(not torch.equal(ref.net.state_dict()[k], after_fit1[k]) for k in after_fit1)
    assert {int(s["step"]) for s in ref.optimizer.state.values()} == {6}  # Adam continued from fit 1


def test_same_seed_same_result_other_seed_differs():
    layers, grid, size = VIT_LIKE
    batch = make_batch(6, size, layers, grid)

    def run(seed):
        ref = make(layers, size, seed=seed, steps=4, batch_size=4, selection=(8, 4), **SMALL)
        losses = ref.fit(batch)
        return losses, ref.refine(batch.images, batch.features, batch.coarse)

    l1, o1 = run(0)
    l2, o2 = run(0)
    l3, o3 = run(1)
    assert len(l1) == 4 and l1 == l2 and torch.equal(o1, o2)
    assert not torch.equal(o1, o3)


def test_coarse_map_is_an_input_and_its_ablation_removes_it():
    layers, grid, size = CNN_LIKE
    batch = make_batch(2, size, layers, grid)
    other = batch.coarse.flip(-1) * 2 + 0.3
    ref = make(layers, size, **SMALL)
    assert (ref.refine(batch.images, batch.features, batch.coarse) - ref.refine(batch.images, batch.features, other)).abs().max() > 1e-6
    ablated = make(layers, size, use_anomaly_map=False, **SMALL)
    assert torch.equal(ablated.refine(batch.images, batch.features, batch.coarse), ablated.refine(batch.images, batch.features, other))


def test_bad_options_are_rejected():
    layers, _, size = CNN_LIKE
    with pytest.raises(TypeError, match="unknown RealNet option"):
        make(layers, size, selections=(1, 1))
    with pytest.raises(ValueError, match="selection"):
        make(layers, size, selection=(4,))
    with pytest.raises(ValueError, match="widths"):
        make(layers, size, widths=(8, 8))


def bump_task(n: int = 16, size: int = 64, grid: int = 8, seed: int = 0) -> RefineBatch:
    """A square defect per image with a Gaussian bump of the coarse map over it; features are noise."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size)
    yy, xx = torch.meshgrid(torch.arange(grid) + 0.5, torch.arange(grid) + 0.5, indexing="ij")
    coarse = 0.1 + 0.05 * torch.rand(n, grid, grid, generator=g)
    for i in range(n):
        s = int(torch.randint(12, 25, (1,), generator=g))
        y, x = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
        masks[i, y : y + s, x : x + s] = 1
        cy, cx, r = (y + s / 2) * grid / size, (x + s / 2) * grid / size, s * grid / size / 2
        coarse[i] += 0.5 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    feats = FeatureSet(
        {"a": torch.randn(n, 8, grid, grid, generator=g), "b": torch.randn(n, 16, grid // 2, grid // 2, generator=g)},
        torch.randn(n, 4, generator=g),
    )
    return RefineBatch(torch.randn(n, 3, size, size, generator=g), feats, coarse, masks)


def test_it_learns():
    ref = make(CNN_LIKE[0], 64, steps=40)  # default architecture
    losses = ref.fit(bump_task())
    assert len(losses) == 40
    # measured here: first-5 mean 0.61, last-5 mean 0.16
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
