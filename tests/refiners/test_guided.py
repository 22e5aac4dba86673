"""Guided-filter refiner (bench/refiners/guided.py): shapes, reference loop, edge transfer, options."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from bench.errors import ConfigError
from bench.ops import upsample
from bench.refiners.guided import LUMA, box_mean, guided_filter, make_guide
from bench.registry import REFINERS
from refiner_inputs import images_and_coarse as inputs


def make(**options):
    return REFINERS.create("guided", channels={"a": 8}, image_size=32, **options)


# ---- a direct, obviously-correct reference -------------------------------------------------

def window(i: int, j: int, r: int, h: int, w: int) -> list[tuple[int, int]]:
    """The pixels of the (2r+1)² window centred at (i, j) that lie inside the h×w image."""
    return [(y, x) for y in range(i - r, i + r + 1) for x in range(j - r, j + r + 1) if 0 <= y < h and 0 <= x < w]


def reference_guided(I: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al., eqs. (5)–(8) (grey) and (14) (colour), window by window. ``I`` (H,W,C), ``p`` (H,W)."""
    h, w, c = I.shape
    a = np.zeros((h, w, c))
    b = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            pix = window(i, j, r, h, w)
            Iw = np.array([I[y, x] for y, x in pix])  # (n, C)
            pw = np.array([p[y, x] for y, x in pix])  # (n,)
            mu, pbar = Iw.mean(0), pw.mean()
            cov = (Iw * pw[:, None]).mean(0) - mu * pbar  # (C,)
            sigma = (Iw[:, :, None] * Iw[:, None, :]).mean(0) - np.outer(mu, mu)  # (C,C), biased
            a[i, j] = np.linalg.solve(sigma + eps * np.eye(c), cov)
            b[i, j] = pbar - a[i, j] @ mu
    q = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            ks = window(i, j, r, h, w)  # the windows k that contain i are those centred within r of i
            q[i, j] = np.mean([a[y, x] @ I[i, j] + b[y, x] for y, x in ks])
    return q


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "color"])
@pytest.mark.parametrize("r,eps", [(1, 1e-2), (2, 1e-3), (5, 1e-1)])
def test_filter_matches_reference_loop(channels, r, eps):
    g = torch.Generator().manual_seed(r)
    I = torch.rand(2, channels, 8, 8, generator=g, dtype=torch.float64)
    I[1, :, :, 4:] += 0.5  # an edge in the second image
    p = torch.rand(2, 8, 8, generator=g)
    out = guided_filter(I, p, r, eps)
    assert out.shape == (2, 8, 8) and out.dtype == torch.float32
    for k in range(2):
        ref = reference_guided(I[k].permute(1, 2, 0).numpy(), p[k].double().numpy(), r, eps)
        np.testing.assert_allclose(out[k].numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("guide", ["gray", "color"])
def test_refiner_matches_reference_end_to_end(guide):
    """Normalised images + 4×4 coarse maps → refine equals the loop on the de-normalised guide."""
    g = torch.Generator().manual_seed(7)
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # CLIP's
    raw = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    images = ((raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).float()
    coarse = torch.rand(2, 4, 4, generator=g)
    out = make(radius=2, eps=1e-2, guide=guide, mean=mean, std=std).refine(images, None, coarse)
    up = upsample(coarse, (8, 8), align_corners=False).double().numpy()
    for k in range(2):
        I = raw[k].permute(1, 2, 0).numpy()
        if guide == "gray":
            I = (I * np.array(LUMA)).sum(-1, keepdims=True)
        np.testing.assert_allclose(out[k].numpy(), reference_guided(I, up[k], 2, 1e-2), atol=1e-5, rtol=0)


def test_box_mean_clips_windows_at_borders():
    x = torch.rand(2, 5, 7, dtype=torch.float64)
    ref = torch.empty_like(x)
    for i in range(5):
        for j in range(7):
            ref[:, i, j] = x[:, max(0, i - 2) : i + 3, max(0, j - 2) : j + 3].mean((1, 2))
    torch.testing.assert_close(box_mean(x, 2), ref, atol=1e-12, rtol=0)
    # a window larger than the map: the mean of the whole map everywhere
    torch.testing.assert_close(box_mean(x, 30), x.mean((1, 2), keepdim=True).expand_as(x), atol=1e-12, rtol=0)


# ---- the refiner -------------------------------------------------------------------------------

def test_registered_and_untrained():
    assert "guided" in REFINERS.names()
    refiner = make()
    assert refiner.trainable is False and refiner.num_parameters() == 0
    assert (refiner.opts.radius, refiner.opts.eps, refiner.opts.guide) == (8, 1e-3, "gray")


@pytest.mark.parametrize("guide", ["gray", "color"])
@pytest.mark.parametrize("size,grid", [((32, 32), (4, 4)), ((56, 56), (7, 7)), ((24, 40), (3, 5))], ids=["cnn", "vit", "rect"])
def test_shape_dtype(size, grid, guide):
    images, coarse = inputs(3, size, grid)
    out = make(guide=guide).refine(images, None, coarse)
    assert out.shape == (3, *size) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not out.requires_grad


def test_radius_zero_is_none():
    images, coarse = inputs(2, (40, 40), (5, 5))
    expected = REFINERS.create("none").refine(images, None, coarse)
    assert torch.equal(make(radius=0).refine(images, None, coarse), expected)


def test_linear_in_the_map():
    """q is linear in p and keeps constants: the level of the coarse scores does not meet eps."""
    images, coarse = inputs(2, (32, 32), (4, 4))
    refiner = make()
    base = refiner.refine(images, None, coarse)
    torch.testing.assert_close(refiner.refine(images, None, 100 * coarse - 3), 100 * base - 3, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(refiner.refine(images, None, torch.full_like(coarse, 0.3)), torch.full_like(base, 0.3), atol=1e-6, rtol=0)


def test_flat_image_gives_a_finite_box_smoothing():
    """A constant image (min = max) has no edges: the filter is a box filter of a box filter."""
    _, coarse = inputs(1, (16, 16), (4, 4))
    images = torch.full((1, 3, 16, 16), -0.3)
    out = make(radius=2).refine(images, None, coarse)
    expected = box_mean(box_mean(upsample(coarse, (16, 16), align_corners=False).double(), 2), 2).float()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_guide_range():
    images, _ = inputs(2, (8, 8), (1, 1))
    for guide in ("gray", "color"):
        g = make_guide(images, make(guide=guide).opts)  # per-image min-max
        assert g.shape == (2, 1 if guide == "gray" else 3, 8, 8)
        assert torch.allclose(g.amin((1, 2, 3)), torch.zeros(2, dtype=g.dtype))
        assert torch.allclose(g.amax((1, 2, 3)), torch.ones(2, dtype=g.dtype))
    g = make_guide(images, make(mean=0.5, std=0.25).opts)  # de-normalised, clipped
    raw = (images.double() * 0.25 + 0.5).clamp(0, 1)
    torch.testing.assert_close(g, (raw * torch.tensor(LUMA, dtype=raw.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True))


def blob_scene(noise: float, size: int = 64, patch: int = 8):
    """A bright rectangle not aligned with the patch grid; its coarse map = patch-averaged mask."""
    g = torch.Generator().manual_seed(0)
    raw = torch.full((1, 3, size, size), 0.2)
    raw[..., 21:45, 19:43] = 0.8
    raw = raw + noise * torch.randn(raw.shape, generator=g)
    mask = torch.zeros(1, size, size)
    mask[:, 21:45, 19:43] = 1
    coarse = F.avg_pool2d(mask[:, None], patch)[:, 0]
    return (raw - 0.5) / 0.5, coarse, mask


def edge_share(q: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of the map's total variation that lies on the true boundary (within 1 px of it)."""
    band = (F.max_pool2d(mask[:, None], 3, 1, 1) + F.max_pool2d(-mask[:, None], 3, 1, 1))[:, 0] > 0
    gx, gy = (q[:, :, 1:] - q[:, :, :-1]).abs(), (q[:, 1:] - q[:, :-1]).abs()
    on = (gx * (band[:, :, 1:] & band[:, :, :-1])).sum() + (gy * (band[:, 1:] & band[:, :-1])).sum()
    return float(on / (gx.sum() + gy.sum()))


@pytest.mark.parametrize("guide", ["gray", "color"])
@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_edges_move_onto_the_image_edge(noise, guide):
    """The map's transition follows the image edge: guided filtering concentrates the map's
    variation on the true boundary (≈0.5 of it against ≈0.1 for bilinear upsampling) and then
    separates region from background perfectly (pixel AUROC 1.0 against ≈0.997)."""
    images, coarse, mask = blob_scene(noise)
    bilinear = REFINERS.create("none").refine(images, None, coarse)
    guided = make(guide=guide).refine(images, None, coarse)
    assert edge_share(guided, mask) > 3 * edge_share(bilinear, mask)
    auc = {name: roc_auc_score(mask.flatten().numpy(), q.flatten().numpy()) for name, q in (("bilinear", bilinear), ("guided", guided))}
    assert auc["guided"] > auc["bilinear"] and auc["guided"] > 0.9999
    # the jump sits exactly at the edge: across the rectangle's left edge (column 18 → 19)
    row = guided[0, 32]
    steps = (row[1:] - row[:-1]).abs()
    assert int(steps[:32].argmax()) == 18


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="'sigma'") as info:
        make(sigma=3, radius=2)
    assert "radius" in str(info.value) and "eps" in str(info.value)


@pytest.mark.parametrize("bad,word", [
    (dict(radius=-1), "radius"), (dict(radius=2.5), "radius"), (dict(eps=0), "eps"), (dict(eps="small"), "eps"),
    (dict(guide="rgb"), "guide"), (dict(mean=(0.5, 0.5, 0.5)), "mean and std"), (dict(mean=0.5, std=0), "std"),
    (dict(mean=(1, 2), std=(1, 2)), "mean"),
])
def test_invalid_values(bad, word):
    with pytest.raises(ConfigError, match=word):
        make(**bad)
