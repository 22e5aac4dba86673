"""The paired bootstrap's histograms against the exact metrics, its resamples and its pairing."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from bench.bootstrap import (
    image_metrics,
    load,
    pixel_histograms,
    resample_weights,
    save,
    unit_statistics,
)
from bench.evaluation import evaluate
from bench.metrics import image_metrics as exact_image_metrics
from bench.metrics import pixel_metrics


def smooth_set(n=24, size=64, seed=0):
    """Smooth maps with rectangular defects in a third of the images, a little brighter there."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    labels = np.zeros(n, int)
    for i in range(n // 3):
        y, x = rng.integers(4, size - 20, 2)
        masks[i, y : y + rng.integers(3, 16), x : x + rng.integers(3, 16)] = True
        labels[i] = 1
    maps = np.stack([gaussian_filter(rng.random((size, size)), 2) for _ in range(n)]) + 0.1 * masks * rng.random((n, 1, 1))
    maps = (1 / (1 + np.exp(-30 * (maps - 0.55)))).astype(np.float32)
    return maps, masks, labels, maps.reshape(n, -1).max(1)


def test_image_metrics_of_resamples_are_exact():
    _, _, labels, scores = smooth_set()
    weights = np.ones((1, len(labels)))
    got = image_metrics(scores, labels, weights)
    want = exact_image_metrics(scores, labels)
    for name in ("auroc", "ap", "f1_max"):
        assert got[name][0] == pytest.approx(want[f"image_{name}"], abs=1e-12)
    twice = image_metrics(np.concatenate([scores, scores]), np.concatenate([labels, labels]), np.ones((1, 2 * len(labels))))
    doubled = image_metrics(scores, labels, 2 * weights)  # an image drawn twice counts twice
    assert doubled["ap"][0] == pytest.approx(twice["ap"][0])


def upsampled_set(n=24, grid=16, size=256, seed=0):
    """Maps as the harness makes them: a patch grid upsampled bilinearly, brighter on the defects."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 1, grid, grid)).astype(np.float32))
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 3):
        y, x = rng.integers(8, size - 80, 2)
        masks[i, y : y + rng.integers(8, 64), x : x + rng.integers(8, 64)] = True
    return (maps + 0.3 * masks).astype(np.float32), masks


@pytest.mark.parametrize("make,tolerance", [
    # every pixel (64 px), 256 bins: the binning error alone (measured: 0.01, 0.35, 0.14, 0.04 points)
    (smooth_set, {"auroc": 0.0005, "ap": 0.005, "f1_max": 0.003, "aupro": 0.001}),
    # every 2nd row and column (256 px) of maps upsampled from a 16x16 grid, as the harness's
    # (measured: 0.00, 0.72, 0.58, 0.31 points)
    (upsampled_set, {"auroc": 0.001, "ap": 0.01, "f1_max": 0.008, "aupro": 0.005}),
])
def test_histogram_error_against_the_exact_pixel_metrics(make, tolerance):
    """The documented error of the binned metrics (also measured at 120 images of 256² by
    benchmarks/test_bootstrap_speed.py); a bootstrap interval is centred on the exact value, so
    this error only touches its width and the per-group metrics."""
    maps, masks = make()[:2]
    exact = pixel_metrics(maps, masks)
    binned = pixel_histograms(maps, masks).metrics(np.ones((1, len(maps))))
    for name, tol in tolerance.items():
        assert binned[name][0] == pytest.approx(exact[f"pixel_{name}"], abs=tol), name


def test_resamples_are_stratified_seeded_and_start_with_the_scope():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    index = np.array([1, 2, 3, 4, 6, 7])
    weights = resample_weights(labels, index, 50, (0, 1, 2))
    assert weights.shape == (51, 8)
    assert weights[0].tolist() == [0, 1, 1, 1, 1, 0, 1, 1]
    assert (weights[:, [0, 5]] == 0).all()  # outside the scope: never drawn
    assert (weights[1:, [3, 4, 6]].sum(1) == 3).all() and (weights[1:, [1, 2, 7]].sum(1) == 3).all()
    assert np.array_equal(weights, resample_weights(labels, index, 50, (0, 1, 2)))
    assert not np.array_equal(weights, resample_weights(labels, index, 50, (1, 1, 2)))


def test_unit_statistics_pair_refiners_of_a_block_and_log_per_group_metrics(tmp_path):
    maps, masks, labels, scores = smooth_set()
    groups = np.array_split(np.random.default_rng(0).permutation(len(maps)), 3)
    a = unit_statistics(scores, labels, maps, masks, groups, seed=0, category="c", resamples=200)
    b = unit_statistics(scores, labels, maps, masks, groups, seed=0, category="c", resamples=200)
    assert set(a.replicates) >= {"pixel_ap", "pixel_ap_g2k", "pixel_aupro_g2k", "image_auroc"}
    assert all(v.shape == (201,) for v in a.replicates.values())
    for key, value in a.replicates.items():  # same block, same images resampled: identical maps, zero gain
        np.testing.assert_array_equal(value, b.replicates[key])
    sharper = unit_statistics(scores, labels, np.where(masks, 1.0, maps * 0.5).astype(np.float32), masks, groups,
                              seed=0, category="c", resamples=200)
    gain = (sharper.replicates["pixel_ap"] - sharper.replicates["pixel_ap"][0]) - (a.replicates["pixel_ap"] - a.replicates["pixel_ap"][0])
    assert np.isfinite(gain).all() and gain.std() > 0
    exact = evaluate(scores, labels, __import__("torch").from_numpy(maps), __import__("torch").from_numpy(masks), groups)
    assert a.replicates["pixel_ap_g2k"][0] == pytest.approx(exact["pixel_ap_g2k"], abs=0.01)
    assert list(a.series()["group_pixel_ap"]) == [1, 2, 3]
    assert load(save(tmp_path / "u" / "bootstrap.npz", a.replicates)).keys() == a.replicates.keys()


def test_without_masks_only_image_metrics_and_zero_resamples_give_none():
    maps, _, labels, scores = smooth_set()
    groups = [np.arange(12), np.arange(12, 24)]
    stats = unit_statistics(scores, labels, maps, None, groups, seed=0, category="c", resamples=100)
    assert set(stats.replicates) == {"image_auroc", "image_ap", "image_f1_max", "image_auroc_g2k", "image_ap_g2k",
                                     "image_f1_max_g2k"}
    assert stats.groups == {}
    assert unit_statistics(scores, labels, maps, None, groups, 0, "c", resamples=0).replicates == {}
