"""Gaussian-smoothing refiner (bench/refiners/gaussian.py): shapes, sigma=0, scipy agreement, kernel, options."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bench.errors import ConfigError
from bench.ops import gaussian_smooth, upsample
from bench.registry import REFINERS
from refiner_inputs import images_and_coarse as inputs


def make(**options):
    return REFINERS.create("gaussian", channels={"a": 8}, image_size=32, **options)


def test_registered_and_untrained():
    assert "gaussian" in REFINERS.names()
    refiner = make()
    assert refiner.trainable is False and refiner.num_parameters() == 0 and refiner.fit(None) == []
    assert refiner.opts.sigma == 4.0 and refiner.opts.radius == 16  # AnomalyCLIP: scipy, sigma 4, truncate 4


@pytest.mark.parametrize("size,grid", [((32, 32), (4, 4)), ((56, 56), (7, 7)), ((24, 40), (3, 5))], ids=["cnn", "vit", "rect"])
def test_shape_dtype(size, grid):
    images, coarse = inputs(3, size, grid)
    out = make().refine(images, None, coarse)
    assert out.shape == (3, *size) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not out.requires_grad


def test_sigma_zero_is_none():
    images, coarse = inputs(2, (40, 40), (5, 5))
    expected = REFINERS.create("none").refine(images, None, coarse)
    assert torch.equal(make(sigma=0).refine(images, None, coarse), expected)


def test_matches_scipy_per_image():
    """The batched filter equals scipy's 2-D call on each image separately, in float64."""
    images, coarse = inputs(3, (12, 10), (3, 5))
    out = make(sigma=1.5).refine(images, None, coarse)
    up = upsample(coarse, (12, 10), align_corners=False).double().numpy()
    for b in range(3):
        ref = gaussian_filter(up[b], sigma=1.5)  # scipy's defaults: mode "reflect", truncate 4
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-5, rtol=0)
    # and the images of a batch do not leak into each other
    alone = make(sigma=1.5).refine(images[1:2], None, coarse[1:2])
    torch.testing.assert_close(alone[0], out[1], atol=1e-6, rtol=0)


def test_impulse_response_is_the_truncated_normalised_gaussian():
    """Independent of scipy: a unit impulse away from the border returns the kernel itself."""
    sigma, truncate, n = 2.0, 4.0, 41
    radius = int(truncate * sigma + 0.5)  # 8
    impulse = torch.zeros(1, n, n)
    impulse[0, n // 2, n // 2] = 1
    out = gaussian_smooth(impulse, sigma, truncate)[0].double()
    x = np.arange(-radius, radius + 1)
    k1 = np.exp(-0.5 * (x / sigma) ** 2)
    k1 /= k1.sum()
    kernel = np.zeros((n, n))
    c = n // 2
    kernel[c - radius : c + radius + 1, c - radius : c + radius + 1] = np.outer(k1, k1)
    np.testing.assert_allclose(out.numpy(), kernel, atol=1e-7, rtol=0)
    assert math.isclose(float(out.sum()), 1.0, abs_tol=1e-6)


def test_constant_map_stays_constant_and_any_size_works():
    """Reflecting borders keep a constant map constant, even with a kernel wider than the map."""
    images, _ = inputs(1, (6, 9), (1, 1))
    coarse = torch.full((1, 2, 3), 0.25)
    out = make(sigma=10).refine(images, None, coarse)
    torch.testing.assert_close(out, torch.full((1, 6, 9), 0.25), atol=1e-6, rtol=0)


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="'radius'") as info:
        make(radius=3, sigma=2)
    assert "sigma" in str(info.value)  # the known options are listed


@pytest.mark.parametrize("bad", [dict(sigma=-1), dict(sigma="four"), dict(sigma=float("nan")), dict(truncate=0)])
def test_invalid_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        make(**bad)
