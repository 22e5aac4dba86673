"""ARD refiner (bench/refiners/ard.py): architecture, coarse-map normalisation, learning.

The contract every trained decoder shares (shapes, gradients, ablation, unknown options and
coarse_norm rejected, carry-over, determinism) is tested in test_trainable_contract.py.
"""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from bench.records import FeatureSet, RefineBatch
from refiner_inputs import CNN_LIKE, SMALL, make_batch, make_refiner

make_ard = partial(make_refiner, "ard")


def test_architecture_has_the_papers_parts():
    layers, _, size = CNN_LIKE
    groups = {n.split(".")[0] for n, _ in make_ard(layers, size).net.named_parameters()}
    assert {"stem_anomaly", "stem_fuse", "encoder", "ar1", "ar2", "bi", "head"} <= groups


def test_robust_normalisation_is_invariant_to_the_coarse_scale():
    layers, grid, size = CNN_LIKE
    batch = make_batch(4, size, layers, grid)
    scaled = RefineBatch(batch.images, batch.features, batch.coarse * 40 + 3, batch.masks)
    outs = []
    for b in (batch, scaled):
        ard = make_ard(layers, size, steps=2, batch_size=4, **SMALL["ard"])
        ard.fit(b)
        outs.append(ard.refine(b.images, b.features, b.coarse))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)
    # and the stored statistics are what refine uses, not the refined batch's own
    loc, scale = ard.stored_normalisation
    assert scale > 0
    norm = ard.normalise(scaled.coarse[:1], ard._stats_for_refine(scaled.coarse[:1]))
    torch.testing.assert_close(norm, ((scaled.coarse[:1, None] - loc) / scale).clamp(-10, 10))


@pytest.mark.parametrize("mode", ["batch", "minmax", "none"])
def test_other_normalisation_modes_run(mode):
    layers, grid, size = CNN_LIKE
    batch = make_batch(4, size, layers, grid)
    ard = make_ard(layers, size, coarse_norm=mode, steps=1, batch_size=4, **SMALL["ard"])
    assert len(ard.fit(batch)) == 1
    out = ard.refine(batch.images, batch.features, batch.coarse)
    assert out.shape == (4, size, size) and torch.isfinite(out).all()


def decoy_task(n=16, size=64, grid=8, seed=0) -> RefineBatch:
    """Each image holds two equally bright squares: the defect (masked, with a bump in the coarse
    map there) in one half and a decoy in the other; features are noise. The image alone cannot tell
    them apart, the coarse map alone cannot draw the edges."""
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size)
    yy, xx = torch.meshgrid(torch.arange(grid) + 0.5, torch.arange(grid) + 0.5, indexing="ij")
    coarse = 0.1 + 0.02 * torch.rand(n, grid, grid, generator=g)
    for i in range(n):
        s = int(torch.randint(10, 17, (1,), generator=g))
        side = int(torch.randint(0, 2, (1,), generator=g))
        y, yd = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
        x, xd = (int(v) for v in torch.randint(0, size // 2 - s, (2,), generator=g))
        x, xd = x + side * size // 2, xd + (1 - side) * size // 2
        masks[i, y : y + s, x : x + s] = 1
        images[i, :, y : y + s, x : x + s] += 1.0
        images[i, :, yd : yd + s, xd : xd + s] += 1.0
        cy, cx, r = (y + s / 2) * grid / size, (x + s / 2) * grid / size, s * grid / size / 2
        coarse[i] += 0.5 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    feats = FeatureSet(
        {"a": torch.randn(n, 32, grid, grid, generator=g), "b": torch.randn(n, 16, grid // 2, grid // 2, generator=g)},
        torch.randn(n, 4, generator=g),
    )
    return RefineBatch(images, feats, coarse, masks)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    order = scores.flatten().argsort(descending=True)
    hits = labels.flatten()[order]
    precision = hits.cumsum(0) / torch.arange(1, hits.numel() + 1)
    return float((precision * hits).sum() / hits.sum())


def test_it_learns_to_combine_the_map_and_the_image():
    train, held_out = decoy_task(seed=0), decoy_task(seed=1)
    layers = {"a": (32, 8), "b": (16, 4)}
    aps = {}
    for use in (True, False):
        ard = make_ard(layers, 64, steps=40, use_anomaly_map=use)  # default architecture
        losses = ard.fit(train)
        assert len(losses) == 40
        assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
        aps[use] = average_precision(ard.refine(held_out.images, held_out.features, held_out.coarse), held_out.masks)
    upsampled = F.interpolate(held_out.coarse[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    coarse_ap = average_precision(upsampled, held_out.masks)
    # measured here: refined 0.979, upsampled coarse 0.957, refined without the map 0.466
    assert aps[True] > coarse_ap, (aps, coarse_ap)
    assert aps[True] > aps[False] + 0.2, aps


# ---- output modes (issue 15): how the refined map relates to the coarse map -------------------


@pytest.mark.parametrize("name", ["ard_residual", "ard_gated", "ard_confidence"])
def test_variants_are_registered_presets_outside_all(name):
    from bench.registry import REFINERS

    layers, _, size = CNN_LIKE
    assert make_refiner(name, layers, size).opts.output == name.removeprefix("ard_")
    assert name not in REFINERS.resolve("all") and make_ard(layers, size).opts.output == "replace"


def test_unknown_output_is_rejected():
    layers, _, size = CNN_LIKE
    with pytest.raises(ValueError, match="output must be one of"):
        make_ard(layers, size, output="blend")


def test_residual_equals_none_before_training():
    layers, grid, size = CNN_LIKE
    batch = make_batch(3, size, layers, grid)
    ard = make_ard(layers, size, output="residual")
    none = make_refiner("none", layers, size)
    expected = none.refine(batch.images, batch.features, batch.coarse)
    torch.testing.assert_close(ard.refine(batch.images, batch.features, batch.coarse), expected, atol=1e-6, rtol=0)
    replace = make_ard(layers, size)  # today's default starts from an unrelated map
    assert (replace.refine(batch.images, batch.features, batch.coarse) - expected).abs().max() > 0.05


def test_residual_learns_corrections_around_the_coarse_map():
    layers, grid, size = CNN_LIKE
    batch = make_batch(4, size, layers, grid)
    ard = make_ard(layers, size, output="residual", steps=3, batch_size=4, **SMALL["ard"])
    before = ard.refine(batch.images, batch.features, batch.coarse)
    ard.fit(batch)
    after = ard.refine(batch.images, batch.features, batch.coarse)
    assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("output", ["gated", "confidence"])
def test_gated_outputs_blend_refined_and_coarse(output):
    layers, grid, size = CNN_LIKE
    batch = make_batch(2, size, layers, grid)
    ard = make_ard(layers, size, output=output, **SMALL["ard"])
    r = torch.tensor([[[[3.0, -3.0, 0.0]]]])
    coarse = torch.tensor([[[0.2, 0.7, 0.4]]])
    raw = torch.cat([r, torch.zeros_like(r)], 1) if output == "gated" else r  # gated: gate logit 0 → ½
    p = torch.sigmoid(ard.output_logits(raw, coarse))[0, 0, 0]
    s = torch.sigmoid(r)[0, 0, 0]
    gate = torch.full_like(s, 0.5) if output == "gated" else (2 * s - 1).abs()
    torch.testing.assert_close(p, gate * s + (1 - gate) * coarse[0, 0], atol=1e-5, rtol=0)
    assert ard.net.head.out_channels == (2 if output == "gated" else 1)
    out = ard.refine(batch.images, batch.features, batch.coarse)
    assert out.shape == (2, size, size) and torch.all((out >= 0) & (out <= 1))


def test_output_modes_ignore_the_coarse_map_when_it_is_ablated():
    layers, _, size = CNN_LIKE
    ard = make_ard(layers, size, output="residual", use_anomaly_map=False, **SMALL["ard"])
    logits = ard.output_logits(torch.zeros(1, 1, 2, 2), torch.tensor([[[0.9, 0.1], [0.3, 0.5]]]))
    assert torch.equal(logits, torch.zeros(1, 1, 2, 2))  # the prior is ½ everywhere: logit 0
