"""MuSc: the scoring core pinned by hand, LNAMD and RsCIN against literal re-implementations of the
official steps, the two modes, size limits, and one end-to-end check on EfficientNet features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.methods.musc import model as M
from bench.records import FeatureSet
from bench.registry import BACKBONES, METHODS

# --------------------------------------------------------------------------- hand-made tokens
# 5 images of 2×2 patches (row-major p = 0..3) with 3-d features. Image i, patch p is
# (p, y_i, 0) with y = 0, 0.1, 0.2, 0.3, 0.15, except the outlier patch (image 4, p = 3) at
# (3, 0.15, 2). Patches sit 1 apart along x and the y offsets are ≤ 0.3, so the nearest patch of
# another image is the same p, at distance |y_i - y_j|, except:
#   normal i, p = 3 vs image 4: its patch 2 is nearest, sqrt(1 + (y_i - 0.15)²);
#   outlier (4, 3) vs normal j: patch 3, sqrt(4 + (0.15 - y_j)²).
Y = (0.0, 0.1, 0.2, 0.3, 0.15)


def hand_tokens() -> torch.Tensor:
    tokens = torch.zeros(5, 4, 3, dtype=torch.float64)
    for i, y in enumerate(Y):
        for p in range(4):
            tokens[i, p] = torch.tensor([p, y, 0.0])
    tokens[4, 3, 2] = 2.0
    return tokens


S1 = math.sqrt(1 + 0.15**2)  # normal y=0 or 0.3, p=3 vs image 4
S2 = math.sqrt(1 + 0.05**2)  # normal y=0.1 or 0.2, p=3 vs image 4
OUT1 = math.sqrt(4 + 0.05**2)  # outlier vs y=0.1 / 0.2
OUT2 = math.sqrt(4 + 0.15**2)  # outlier vs y=0 / 0.3

# Per query (i, p): the distances to the 4 other images, from the geometry above.
# interval 0.3 with 4 references: k = int(1.2) = 1 → the smallest.
EXPECTED_03 = [
    [0.1, 0.1, 0.1, 0.1],  # image 0: {.1, .2, .3, .15}; p=3 {.1, .2, .3, S1}
    [0.05, 0.05, 0.05, 0.1],  # image 1: {.1, .1, .2, .05}; p=3 {.1, .1, .2, S2}
    [0.05, 0.05, 0.05, 0.1],  # image 2: {.2, .1, .1, .05}; p=3 {.2, .1, .1, S2}
    [0.1, 0.1, 0.1, 0.1],  # image 3: {.3, .2, .1, .15}; p=3 {.3, .2, .1, S1}
    [
        0.05,
        0.05,
        0.05,
        OUT1,
    ],  # image 4: {.15, .05, .05, .15}; p=3 {OUT2, OUT1, OUT1, OUT2}
]
# interval 0.5: k = int(2.0) = 2 → the mean of the two smallest.
EXPECTED_05 = [
    [0.125, 0.125, 0.125, 0.15],
    [0.075, 0.075, 0.075, 0.1],
    [0.075, 0.075, 0.075, 0.1],
    [0.125, 0.125, 0.125, 0.15],
    [0.05, 0.05, 0.05, OUT1],
]


def brute_force(
    query: torch.Tensor, ref: torch.Tensor, interval: float, exclude_self: bool
) -> torch.Tensor:
    """Direct loops: per (i, p), the nearest-patch distance to each reference image, sorted."""
    out = torch.zeros(query.shape[:2], dtype=torch.float64)
    for i in range(query.shape[0]):
        for p in range(query.shape[1]):
            minima = []
            for j in range(ref.shape[0]):
                if exclude_self and j == i:
                    continue
                minima.append(
                    min(
                        float(torch.linalg.vector_norm(query[i, p] - ref[j, q]))
                        for q in range(ref.shape[1])
                    )
                )
            minima.sort()
            k = max(1, int(len(minima) * interval))
            out[i, p] = sum(minima[:k]) / k
    return out


@pytest.mark.parametrize("interval, expected", [(0.3, EXPECTED_03), (0.5, EXPECTED_05)])
def test_mutual_scores_match_the_hand_computation(interval, expected):
    tokens = hand_tokens()
    scores = M.mutual_scores(tokens, tokens, interval, exclude_self=True)
    assert torch.allclose(scores, torch.tensor(expected, dtype=torch.float64), atol=1e-9)
    # the outlier patch is the top-scored patch of the set
    assert divmod(int(scores.argmax()), 4) == (4, 3)
    # and the map layout puts it at grid cell (1, 1)
    assert scores.view(5, 2, 2)[4, 1, 1] == scores.max()


def test_chunking_and_the_symmetric_path_give_identical_results(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(9, 6, 4, generator=gen, dtype=torch.float64)
    expected = brute_force(tokens, tokens, 0.3, exclude_self=True)
    for chunk in (None, 1, 2, 4, 9, 50):
        got = M.mutual_scores(tokens, tokens, 0.3, exclude_self=True, chunk=chunk)
        assert torch.allclose(got, expected, atol=1e-10), chunk
    monkeypatch.setattr(M, "SYMMETRIC_MINIMA_ELEMENTS", 0)  # per-query-chunk path
    for chunk in (None, 1, 3):
        got = M.mutual_scores(tokens, tokens, 0.3, exclude_self=True, chunk=chunk)
        assert torch.allclose(got, expected, atol=1e-10), chunk


def test_reference_mode_scores_against_all_reference_images():
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    ref = torch.randn(7, 6, 4, generator=gen, dtype=torch.float64)
    for chunk in (None, 1, 2, 3):
        got = M.mutual_scores(query, ref, 0.3, exclude_self=False, chunk=chunk)
        assert torch.allclose(got, brute_force(query, ref, 0.3, exclude_self=False), atol=1e-10)
    # hand case: the outlier image against the four normal images = its mutual row
    tokens = hand_tokens()
    got = M.mutual_scores(tokens[4:], tokens[:4], 0.3)
    assert torch.allclose(got[0], torch.tensor(EXPECTED_03[4], dtype=torch.float64), atol=1e-9)
    # a single reference image works (k = 1): image 4 against image 0
    got = M.mutual_scores(tokens[4:], tokens[:1], 0.3)
    assert torch.allclose(
        got[0], torch.tensor([0.15, 0.15, 0.15, OUT2], dtype=torch.float64), atol=1e-9
    )
    with pytest.raises(ConfigError):
        M.mutual_scores(tokens[4:], tokens[:0], 0.3)


def test_minimum_set_size_follows_the_official_interval_count():
    # official: k = int((N - 1) * 0.3) smallest minima, NaN when that is 0 (N <= 4)
    assert M.min_images_for(0.3) == 5
    assert M.min_images_for(0.5) == 3
    assert M.min_images_for(1.0) == 2
    assert METHODS.create("musc").info.min_images == 5
    assert METHODS.create("musc", interval=0.5).info.min_images == 3


# --------------------------------------------------------------------------- LNAMD


def official_lnamd(x: torch.Tensor, r: int, grid: tuple[int, int]) -> torch.Tensor:
    """A literal transcription of the official steps (xrli-U/MuSc models/modules/_LNAMD.py)."""
    b, c, h, w = x.shape
    x = torch.nn.LayerNorm([c, h, w])(x)  # fresh module: weight 1, bias 0
    if r != 1:
        pad = (r - 1) // 2
        unfolded = torch.nn.Unfold(kernel_size=r, stride=1, padding=pad)(x)  # (B, C·r·r, L)
        unfolded = unfolded.reshape(b, c, r, r, -1).permute(0, 4, 1, 2, 3)  # (B, L, C, r, r)
    else:
        unfolded = x.reshape(b, c, -1, 1, 1).permute(0, 2, 1, 3, 4)
    rr = unfolded.shape[-1]
    if (
        h,
        w,
    ) != grid:  # bilinear resize of every (C, r, r) component over the patch grid
        f = unfolded.reshape(b, h, w, c, rr, rr).permute(0, 3, 4, 5, 1, 2).reshape(-1, h, w)
        f = F.interpolate(f.unsqueeze(1), size=grid, mode="bilinear", align_corners=False).squeeze(
            1
        )
        f = f.reshape(b, c, rr, rr, *grid).permute(0, 4, 5, 1, 2, 3)
        unfolded = f.reshape(b, -1, c, rr, rr)
    flat = unfolded.reshape(-1, 1, c * rr * rr)
    pooled = F.adaptive_avg_pool1d(flat, c).squeeze(1).reshape(b, -1, c)  # MeanMapper
    return pooled / pooled.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("r", [1, 3, 5])
@pytest.mark.parametrize("size, grid", [((8, 8), (8, 8)), ((8, 8), (4, 4)), ((6, 10), (5, 5))])
def test_lnamd_matches_the_official_steps(r, size, grid):
    gen = torch.Generator().manual_seed(r)
    x = torch.randn(2, 7, *size, generator=gen) * 3 + 1
    ours = M.lnamd(x, r, grid)
    assert ours.shape == (2, grid[0] * grid[1], 7)
    assert torch.allclose(ours, official_lnamd(x, r, grid), atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(2, grid[0] * grid[1]), atol=1e-5)


def test_even_or_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="odd"):
        METHODS.create("musc", r_list=(1, 2))
    with pytest.raises(ConfigError):
        METHODS.create("musc", interval=0.0)
    with pytest.raises(ConfigError):
        METHODS.create("musc", chunk=0)


# --------------------------------------------------------------------------- RsCIN


def official_rscin(scores: np.ndarray, cls: np.ndarray, k_list) -> np.ndarray:
    """A literal transcription of the official RsCIN/MMO (min-max normalised scores)."""
    s = (scores - scores.min()) / (scores.max() - scores.min())
    w = torch.tensor(cls @ cls.T).float()
    out = []
    for k in k_list:
        _, drop = torch.topk(w, w.shape[0] - k, largest=False, sorted=True)
        masked = w.clone()
        for i in range(w.shape[0]):
            masked[i, drop[i]] = 0
        d = torch.diag(1 / masked.sum(dim=1))
        out.append(d @ masked @ torch.tensor(s).float().unsqueeze(-1))
    return torch.cat(out, -1).mean(-1).numpy()


def test_rscin_is_an_increasing_affine_map_of_the_official_rescoring():
    gen = torch.Generator().manual_seed(2)
    emb = torch.rand(8, 16, generator=gen)
    scores = torch.rand(8, generator=gen) * 3 + 1
    for k_list in [(1, 2, 3), (1, 4, 5)]:
        ours = M.rscin(scores, emb, k_list)
        cls = F.normalize(emb, dim=-1).numpy()
        official = official_rscin(scores.numpy(), cls, k_list)
        lo, hi = float(scores.min()), float(scores.max())
        assert np.allclose(ours.numpy(), official * (hi - lo) + lo, atol=1e-5)
    assert torch.equal(M.rscin(scores, emb, (1,)), scores)  # k = 1: itself only
    assert torch.equal(M.rscin(scores, emb, (0,)), scores)  # official "off" switch


def test_rscin_breaks_ties_as_the_official_code():
    # three identical embeddings and a twin pair: the neighbours kept among equal similarities
    # are those that the official "zero the n - k smallest" leaves, not those topk(k) keeps
    emb = torch.tensor([[1.0, 0, 0], [1, 0.2, 0], [1, 0.2, 0], [1, 0.2, 0], [0, 1, 0], [0, 1, 0]])
    scores = torch.tensor([0.1, 0.9, 0.2, 0.5, 0.3, 0.8])
    ours = M.rscin(scores, emb, (1, 2, 3))
    official = official_rscin(scores.numpy(), F.normalize(emb, dim=-1).numpy(), (1, 2, 3))
    assert np.allclose(ours.numpy(), official * 0.8 + 0.1, atol=1e-6)
    w = F.normalize(emb, dim=-1) @ F.normalize(emb, dim=-1).T
    keep_k = torch.zeros(6)
    for k in (1, 2, 3):
        values, index = w.topk(k, dim=1)
        mask = torch.zeros_like(w).scatter_(1, index, values)
        keep_k += mask / mask.sum(dim=1, keepdim=True) @ scores / 3
    assert (keep_k - ours).abs().max() > 0.01  # the tie-break matters here


def test_rscin_by_hand():
    # two identical embeddings and one orthogonal: k = 2 averages the twins' scores with
    # cosine weights (1, 1); the third image's 2nd neighbour has similarity 0, so it keeps its own.
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    scores = torch.tensor([1.0, 3.0, 5.0])
    got = M.rscin(scores, emb, (2,))
    assert torch.allclose(got, torch.tensor([2.0, 2.0, 5.0]))


# --------------------------------------------------------------------------- the method


def _feature_set(n: int, seed: int = 0) -> FeatureSet:
    gen = torch.Generator().manual_seed(seed)
    return FeatureSet(
        layers={
            "a": torch.randn(n, 6, 8, 8, generator=gen),
            "b": torch.randn(n, 10, 4, 4, generator=gen),
        },
        embedding=torch.rand(n, 12, generator=gen),
    )


def test_info_and_registry():
    method = METHODS.create("musc")
    info = method.info
    assert info.name == "musc" and info.arxiv == "2401.16753" and info.inter_image
    assert info.default_backbone == "efficientnet_lite0" and not info.needs_auxiliary_training
    assert info.settings["r_list"] == [1, 3, 5] and info.settings["interval"] == 0.3
    assert info.settings["rscin_k"] == [1, 2, 3] and info.settings["layernorm"] == "image"
    assert "CLIP" in info.deviations and "RsCIN" in info.deviations


def test_score_is_the_mean_over_layers_and_r_of_the_scoring_core():
    fs = _feature_set(6)
    method = METHODS.create("musc", rscin=False)
    out = method.score(fs)
    assert out.maps.shape == (6, 4, 4) and out.image_scores.shape == (6,)  # coarsest layer: 4×4
    parts = [
        M.mutual_scores(
            M.lnamd(layer, r, (4, 4)), M.lnamd(layer, r, (4, 4)), 0.3, exclude_self=True
        )
        for r in (1, 3, 5)
        for layer in fs.layers.values()
    ]
    assert torch.allclose(out.maps.flatten(1), torch.stack(parts).mean(0), atol=1e-6)
    assert torch.allclose(out.image_scores, out.maps.flatten(1).amax(1))
    assert METHODS.create("musc", grid=8).score(fs).maps.shape == (6, 8, 8)
    chunked = METHODS.create("musc", rscin=False, chunk=1).score(fs)
    assert torch.allclose(chunked.maps, out.maps, atol=1e-6)


def test_mutual_mode_equals_reference_mode_against_the_others():
    fs = _feature_set(6, seed=3)
    method = METHODS.create("musc", rscin=False)
    mutual = method.score(fs)
    for i in (0, 4):
        others = [j for j in range(6) if j != i]
        single = method.score(fs.select([i]), reference=fs.select(others))
        assert torch.allclose(single.maps[0], mutual.maps[i], atol=1e-6)
    # reference mode needs one reference image, no minimum batch
    one = method.score(fs.select([0]), reference=fs.select([1]))
    assert one.maps.shape == (1, 4, 4)
    with pytest.raises(ConfigError, match="at least 1 reference"):
        method.score(fs.select([0]), reference=fs.select([]))
    # RsCIN with a batch of one leaves the score alone
    assert torch.allclose(
        METHODS.create("musc").score(fs.select([0]), reference=fs.select([1])).image_scores,
        one.image_scores,
    )


def test_image_score_is_the_max_of_the_map_upsampled_as_official():
    fs = _feature_set(6)
    grid = METHODS.create("musc", rscin=False, image_score="grid").score(fs)
    method = METHODS.create("musc", rscin=False)
    assert method.info.align_corners and method.info.settings["upsampling"].startswith("bilinear, align_corners=True")
    method.bind(type("B", (), {"input_size": 30})())
    out = method.score(fs)
    assert torch.equal(out.maps, grid.maps)  # maps stay on the grid (what refiners consume)
    up = F.interpolate(out.maps[:, None], size=(30, 30), mode="bilinear", align_corners=True)
    assert torch.allclose(out.image_scores, up.flatten(1).amax(1))
    assert (grid.image_scores - out.image_scores).abs().max() > 1e-4  # not the grid max
    assert torch.all(out.image_scores <= grid.image_scores + 1e-7)
    fixed = METHODS.create("musc", rscin=False, image_size=30, align_corners=False)
    assert not fixed.info.align_corners
    up = F.interpolate(out.maps[:, None], size=(30, 30), mode="bilinear", align_corners=False)
    assert torch.allclose(fixed.score(fs).image_scores, up.flatten(1).amax(1))
    with pytest.raises(ConfigError, match="image_score"):
        METHODS.create("musc", image_score="mean")


def test_official_backbone_runs_exact_gelu_at_518():
    options = METHODS.create("musc").backbone_options("ViT-L-14-336")
    assert options == {"layers": ("block6", "block12", "block18", "block24"), "input_size": 518, "quick_gelu": False}


def test_too_few_images_for_mutual_scoring_is_a_config_error():
    method = METHODS.create("musc")
    with pytest.raises(ConfigError, match="at least 5 images"):
        method.score(_feature_set(4))
    assert torch.isfinite(method.score(_feature_set(5)).maps).all()


def test_mismatched_reference_layers_are_config_errors():
    fs = _feature_set(5)
    other = FeatureSet({"a": fs.layers["a"]}, fs.embedding)
    with pytest.raises(ConfigError, match="layers"):
        METHODS.create("musc").score(fs, reference=other)


# --------------------------------------------------------------------------- end to end


def _drawn(seed: int, defect: bool) -> np.ndarray:
    """A woven texture; the defect is a red disc of radius 14 centred at (y, x) = (120, 168)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    base = 128 + 60 * np.sin(xx / 6 + rng.uniform(0, 6)) * np.sin(yy / 9 + rng.uniform(0, 6))
    image = np.stack([base, 0.9 * base, 0.7 * base], -1) + rng.normal(0, 5, (256, 256, 3))
    if defect:
        image[(yy - 120) ** 2 + (xx - 168) ** 2 <= 14**2] = (220, 30, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_end_to_end_the_painted_defect_has_the_top_score():
    backbone = BACKBONES.create("efficientnet_lite0")
    images = [_drawn(seed, defect=seed == 3) for seed in range(7)]
    features = backbone.features(backbone.preprocess(images))
    out = METHODS.create("musc").score(features)
    assert out.maps.shape == (7, 16, 16)
    assert int(out.image_scores.argmax()) == 3
    row, col = divmod(int(out.maps[3].argmax()), 16)
    # the disc spans pixels 106..134 × 154..182, i.e. grid cells 6..8 × 9..11 (16 px each)
    assert 6 <= row <= 8 and 9 <= col <= 11, (row, col)
    assert float(out.maps[3].max()) > float(out.maps[[0, 1, 2, 4, 5, 6]].max())


def test_token_layernorm_option_normalises_each_token_over_channels():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 4, 4, generator=gen) * 2 + 3
    normed = M.layer_norm_map(x, "token")
    assert torch.allclose(normed.mean(dim=1), torch.zeros(2, 4, 4), atol=1e-5)
    assert torch.allclose(normed.var(dim=1, unbiased=False), torch.ones(2, 4, 4), atol=1e-3)
    image = M.layer_norm_map(x, "image")
    assert torch.allclose(image.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    method = METHODS.create("musc", layernorm="token")
    assert method.info.settings["layernorm"] == "token"
    assert torch.isfinite(method.score(_feature_set(5)).maps).all()
    with pytest.raises(ConfigError, match="layernorm"):
        METHODS.create("musc", layernorm="batch")
