"""DeSTSeg decoder (refiners/destseg.py): shapes, gradients, loss, carry-over, determinism, learning."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.records import FeatureSet, RefineBatch
from bench.registry import REFINERS

SMALL = dict(width=16, res_blocks=1)  # plumbing tests: capacity does not matter, speed does


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
    return REFINERS.create("destseg", channels={k: c for k, (c, _) in layers.items()}, image_size=size, **options)


@pytest.mark.parametrize("layers,grid,size", [CNN_LIKE, VIT_LIKE], ids=["cnn", "vit"])
def test_refine_shape_and_range(layers, grid, size):
    batch = make_batch(3, size, layers, grid)
    ref = make(layers, size)  # default architecture
    assert ref.trainable and ref.num_parameters() == sum(p.numel() for p in ref.net.parameters())
    out = ref.refine(batch.images, batch.features, batch.coarse)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert torch.all((out >= 0) & (out <= 1)) and torch.isfinite(out).all()
    assert not out.requires_grad


def test_architecture_follows_destseg():
    layers, _, size = CNN_LIKE
    net = make(layers, size).net
    assert len(net.res) == 2 and net.res[0].conv1.in_channels == 8 + 16 + 1  # features + coarse map
    aspp = net.head[0]
    assert [b[0].dilation for b in aspp.branches] == [(6, 6), (12, 12), (18, 18)]
    assert isinstance(net.head[0].pool[0], torch.nn.AdaptiveAvgPool2d)
    assert net.head[-1].out_channels == 1 and net.head[-1].kernel_size == (1, 1)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_gradients_reach_every_parameter():
    layers, grid, size = VIT_LIKE
    batch = make_batch(2, size, layers, grid)
    ref = make(layers, size)
    ref.net.train()
    logits = ref.forward(batch.images, ref.fuse_features(batch.features, (grid, grid)), ref.normalise(batch.coarse))
    assert logits.shape == (2, 1, size, size)
    ref.loss(logits, batch.masks[:, None]).backward()
    missing = [n for n, p in ref.net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


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
        ref = make(layers, size, seed=seed, steps=4, batch_size=4, **SMALL)
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
    assert (ref.refine(batch.images, batch.features, batch.coarse) - ref.refine(batch.images, batch.features, other)).abs().max() > 1e-5
    ablated = make(layers, size, use_anomaly_map=False, **SMALL)
    assert torch.equal(ablated.refine(batch.images, batch.features, batch.coarse), ablated.refine(batch.images, batch.features, other))


def test_options_and_batch_norm_limits():
    layers, grid, size = CNN_LIKE
    with pytest.raises(TypeError, match="unknown DeSTSeg option"):
        make(layers, size, widht=8)
    with pytest.raises(ValueError, match="norm"):
        make(layers, size, norm="layer")
    one = make_batch(1, size, layers, grid)
    with pytest.raises(ValueError, match="at least 2 training images"):
        make(layers, size, steps=1, **SMALL).fit(one)
    assert len(make(layers, size, steps=1, norm="group", **SMALL).fit(one)) == 1


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
    train = bump_task()
    ref = make(CNN_LIKE[0], 64, steps=40, width=64)  # narrower than the default 256, for speed
    losses = ref.fit(train)
    assert len(losses) == 40
    # measured here: first-5 mean 0.53, last-5 mean 0.18
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
