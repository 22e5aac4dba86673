"""Anomaly synthesis for PGT (bench.synth): determinism, mask/pixel contract, recipes, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bench.errors import ConfigError
from bench.synth import (
    RECIPES,
    SynthConfig,
    estimate_foreground,
    perlin_mask,
    perlin_noise,
    procedural_texture,
    synthesize,
    synthesize_set,
)

H, W = 96, 112  # non-square on purpose


def _image(seed: int = 0, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """A smooth, non-constant 'normal' image with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    img = np.stack(
        [100 + 40 * np.sin(xx / 13 + seed), 120 + 30 * np.cos(yy / 9), 90 + 20 * np.sin((xx + yy) / 17)], -1
    )
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _check_contract(src: np.ndarray, out: np.ndarray, mask: np.ndarray, cfg: SynthConfig) -> None:
    assert out.shape == src.shape and out.dtype == np.uint8
    assert mask.shape == src.shape[:2] and mask.dtype == bool
    frac = mask.mean()
    assert cfg.min_area_fraction <= frac <= cfg.max_area_fraction, frac
    np.testing.assert_array_equal(out[~mask], src[~mask])  # outside: byte-identical
    changed = (out != src).any(axis=2)
    assert not (changed & ~mask).any()
    assert changed[mask].mean() > 0.5  # inside: a substantial fraction differs


# ---------------------------------------------------------------- Perlin noise and masks


def test_perlin_noise_shape_range_and_smoothness():
    rng = np.random.default_rng(0)
    for shape, res, angle in [((64, 64), (4, 4), 0.0), ((50, 77), (3, 8), 33.0), ((128, 96), (1, 32), -80.0)]:
        n = perlin_noise(shape, res, rng, angle)
        assert n.shape == shape and n.dtype == np.float32
        assert n.min() >= -1.0 and n.max() <= 1.0
        assert n.std() > 0.05  # not degenerate
    smooth = perlin_noise((128, 128), (4, 4), np.random.default_rng(1))
    assert np.abs(np.diff(smooth, axis=1)).max() < 0.15  # continuous at pixel scale
    # reaches a good part of its range
    big = perlin_noise((256, 256), (16, 16), np.random.default_rng(2), 10.0)
    assert big.max() > 0.5 and big.min() < -0.5


def test_perlin_noise_is_deterministic_per_seed():
    a = perlin_noise((40, 60), (4, 4), np.random.default_rng(7), 20.0)
    b = perlin_noise((40, 60), (4, 4), np.random.default_rng(7), 20.0)
    c = perlin_noise((40, 60), (4, 4), np.random.default_rng(8), 20.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_perlin_masks_are_blobs_within_area_bounds():
    cfg = SynthConfig()
    rng = np.random.default_rng(3)
    for _ in range(40):
        m = perlin_mask((256, 256), rng, cfg)  # DRAEM's size: the finest lattice has 8 px cells
        assert cfg.min_area_fraction <= m.mean() <= cfg.max_area_fraction
        _, n = ndimage.label(m)
        # connected blobs/streaks, not salt-and-pepper: components hold >= 8 pixels on average
        assert n <= max(1, m.sum() // 8)
    # at a moderate lattice, thresholded noise gives a few round blobs with solid interiors
    noise = perlin_noise((128, 128), (4, 4), np.random.default_rng(9), 25.0)
    blob = noise > 0.3
    _, n = ndimage.label(blob)
    assert blob.sum() > 200 and 1 <= n <= 10
    assert ndimage.binary_erosion(blob, iterations=2).sum() > 0.5 * blob.sum()


def test_perlin_mask_respects_region():
    region = np.zeros((96, 96), bool)
    region[20:70, 10:60] = True
    rng = np.random.default_rng(4)
    cfg = SynthConfig()
    for _ in range(20):
        m = perlin_mask((96, 96), rng, cfg, region)
        assert m.any() and not (m & ~region).any()
        assert m.sum() <= cfg.max_area_fraction * region.sum()


def test_procedural_texture_range():
    rng = np.random.default_rng(5)
    for _ in range(6):
        t = procedural_texture((40, 50), rng)
        assert t.shape == (40, 50, 3)
        assert t.min() >= 0 and t.max() <= 255
        assert t.std() > 1.0


# ---------------------------------------------------------------- synthesize


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_alone_keeps_the_contract(recipe):
    cfg = SynthConfig(recipes=(recipe,))
    rng = np.random.default_rng(10)
    pool = [_image(s) for s in (1, 2)]
    for i in range(25):
        src = _image(i % 3)
        out, mask = synthesize(src, rng, pool if i % 2 else None, cfg)
        _check_contract(src, out, mask, cfg)


def test_all_recipes_and_input_untouched():
    cfg = SynthConfig()
    rng = np.random.default_rng(11)
    src = _image(0)
    copy = src.copy()
    pool = [_image(1), _image(2, (80, 140))]  # donors of another size are resized
    pool_copies = [p.copy() for p in pool]
    for _ in range(30):
        out, mask = synthesize(src, rng, pool, cfg)
        _check_contract(src, out, mask, cfg)
    np.testing.assert_array_equal(src, copy)
    for p, c in zip(pool, pool_copies):
        np.testing.assert_array_equal(p, c)


def test_determinism_same_seed_same_arrays_other_seed_differs():
    src, pool = _image(0), [_image(1), _image(2)]
    a = synthesize(src, np.random.default_rng(42), pool)
    b = synthesize(src, np.random.default_rng(42), pool)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [synthesize(src, np.random.default_rng(s), pool) for s in (43, 44, 45)]
    assert any(not np.array_equal(a[1], o[1]) or not np.array_equal(a[0], o[0]) for o in others)
    assert all(not np.array_equal(a[1], o[1]) for o in others)


def test_cutpaste_content_comes_from_another_pool_image():
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    base = np.full((H, W, 3), 90, np.uint8)
    pool = [np.full((H, W, 3), c, np.uint8) for c in colours.astype(np.uint8)]
    cfg = SynthConfig(recipes=("cutpaste",))
    rng = np.random.default_rng(12)
    used = set()
    for _ in range(30):
        out, mask = synthesize(base, rng, pool, cfg)
        _check_contract(base, out, mask, cfg)
        pasted = out[mask].astype(np.float32)
        # one donor per paste: every pasted pixel is closest to the same pool colour...
        d = np.abs(pasted[:, None, :] - colours[None]).max(axis=2)
        donor = np.bincount(d.argmin(axis=1), minlength=3)
        assert (donor > 0).sum() == 1
        k = int(donor.argmax())
        used.add(k)
        # ...and equals it up to the colour jitter (gain ±10 %, ±5 % per channel, offset ±8)
        assert d[:, k].max() <= 0.16 * 200 + 9
        assert (np.abs(pasted - 90).max(axis=1) > 40).all()  # not the base colour
    assert used == {0, 1, 2}


def test_cutpaste_never_uses_the_image_itself_when_pool_given():
    base = np.full((64, 64, 3), 90, np.uint8)
    donor = np.full((64, 64, 3), 220, np.uint8)
    cfg = SynthConfig(recipes=("cutpaste",))
    rng = np.random.default_rng(13)
    for _ in range(10):
        out, mask = synthesize(base, rng, [base, donor], cfg)  # the image itself is skipped
        assert (out[mask].astype(int) > 160).all()


def test_cutpaste_without_pool_uses_the_image_elsewhere():
    src = _image(3)
    cfg = SynthConfig(recipes=("cutpaste",))
    rng = np.random.default_rng(14)
    for _ in range(15):
        out, mask = synthesize(src, rng, None, cfg)
        _check_contract(src, out, mask, cfg)


def test_foreground_restricts_masks():
    img = np.full((96, 96, 3), 20, np.uint8)
    img[30:80, 20:70] = (180, 160, 120)
    fg = estimate_foreground(img)
    assert fg is not None and fg[50, 40] and not fg[5, 5]
    rng = np.random.default_rng(15)
    cfg = SynthConfig(foreground="border")
    for _ in range(15):
        out, mask = synthesize(img, rng, None, cfg)
        assert mask.any() and not (mask & ~fg).any()
    explicit = np.zeros((96, 96), bool)
    explicit[:40, :40] = True
    for _ in range(10):
        _, mask = synthesize(img, rng, None, SynthConfig(), foreground=explicit)
        assert mask.any() and not (mask & ~explicit).any()
    # a plain texture (no distinct border colour): no estimate, whole image
    assert estimate_foreground(_image(0)) is None


# ---------------------------------------------------------------- texture folder


def test_texture_dir_images_are_used(tmp_path):
    Image.fromarray(np.full((20, 30, 3), (250, 250, 0), np.uint8)).save(tmp_path / "a.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.fromarray(np.full((40, 40, 3), (250, 250, 0), np.uint8)).save(sub / "b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    base = np.full((64, 64, 3), 10, np.uint8)
    cfg = SynthConfig(recipes=("texture",), texture_dir=str(tmp_path), beta_range=(1.0, 1.0))
    rng = np.random.default_rng(16)
    seen_colour = 0
    for _ in range(20):
        out, mask = synthesize(base, rng, None, cfg)
        _check_contract(base, out, mask, cfg)
        vals = out[mask].astype(int)
        # full opacity: the yellow texture after gain/offset (inverted with p=0.2: blue-ish)
        r, g, b = vals[:, 0], vals[:, 1], vals[:, 2]
        assert (np.abs(r - g) <= 1).all()
        if (r > 140).all() and (b < 50).all():
            seen_colour += 1
    assert seen_colour >= 8


def test_bad_recipe_names_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        SynthConfig(recipes=("texture", "sparkles"))
    msg = str(err.value)
    assert "sparkles" in msg
    for r in RECIPES:
        assert r in msg
    with pytest.raises(ConfigError):
        SynthConfig(recipes=())


def test_missing_or_empty_texture_dir_is_named(tmp_path):
    missing = tmp_path / "no_such_dtd"
    with pytest.raises(ConfigError, match="no_such_dtd"):
        SynthConfig(texture_dir=str(missing))
    empty = tmp_path / "empty_textures"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not a png")
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match="empty_textures") as err:
        SynthConfig(texture_dir=str(empty))
    assert "no readable images" in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"perlin_scale_range": (3, 3)},
        {"threshold": 1.5},
        {"beta_range": (0.0, 1.0)},
        {"beta_range": (0.8, 0.2)},
        {"min_area_fraction": 0.4, "max_area_fraction": 0.3},
        {"foreground": "magic"},
    ],
)
def test_bad_values_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        SynthConfig(**kwargs)


def test_bad_image_raises():
    with pytest.raises(ValueError):
        synthesize(np.zeros((32, 32), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthesize(np.zeros((32, 32, 3), np.float32), np.random.default_rng(0))


# ---------------------------------------------------------------- synthesize_set


def test_synthesize_set_cycles_sources_and_is_deterministic():
    images = [_image(s) for s in range(3)]
    cfg = SynthConfig()
    imgs, masks, src = synthesize_set(images, 7, np.random.default_rng(20), cfg)
    assert len(imgs) == len(masks) == len(src) == 7
    assert sorted(src[:3]) == [0, 1, 2] and sorted(src[3:6]) == [0, 1, 2]
    for im, m, i in zip(imgs, masks, src):
        _check_contract(images[i], im, m, cfg)
    again = synthesize_set(images, 7, np.random.default_rng(20), cfg)
    assert again[2] == src
    for a, b in zip(imgs, again[0]):
        np.testing.assert_array_equal(a, b)
    assert synthesize_set(images, 0, np.random.default_rng(0), cfg) == ([], [], [])


def test_synthesize_set_cutpaste_draws_from_the_others():
    colours = [(200, 30, 30), (30, 200, 30)]
    images = [np.full((64, 64, 3), c, np.uint8) for c in colours]
    cfg = SynthConfig(recipes=("cutpaste",))
    imgs, masks, src = synthesize_set(images, 6, np.random.default_rng(21), cfg)
    for im, m, i in zip(imgs, masks, src):
        other = np.array(colours[1 - i], dtype=float)
        assert (np.abs(im[m].astype(float) - other).max(axis=1) <= 0.16 * 200 + 9).all()


def test_synthesize_set_single_image():
    imgs, masks, src = synthesize_set([_image(0)], 3, np.random.default_rng(22), SynthConfig())
    assert src == [0, 0, 0] and all(m.any() for m in masks)
