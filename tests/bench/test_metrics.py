"""bench.metrics against scikit-learn and against plain loop references written here."""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from bench import metrics, pixelpasses
from bench.metrics import (
    UNDEFINED,
    aupro,
    aupro_binned,
    compute_metrics,
    image_metrics,
    pixel_metrics,
)

STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), bool)}


# ----------------------------------------------------------------------------- references


def ref_f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) != 0)
    return f1.max()


def ref_regions(masks, connectivity):
    out = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=STRUCTURE[connectivity])
        out += [(i, lab == r) for r in range(1, n + 1)]
    return out


def ref_aupro(maps, masks, limit=0.3, connectivity=8):
    """Every distinct threshold, descending; PRO = mean region overlap; trapezoid up to limit."""
    maps, masks = list(maps), [np.asarray(k, bool) for k in masks]
    regions = ref_regions(masks, connectivity)
    n_normal = sum((~k).sum() for k in masks)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        preds = [m >= t for m in maps]
        fprs.append(sum((p & ~k).sum() for p, k in zip(preds, masks)) / n_normal)
        pros.append(np.mean([preds[i][r].mean() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    i = np.searchsorted(fprs, limit, side="right")  # first point beyond the limit
    if i < len(fprs):
        p = pros[i - 1] + (pros[i] - pros[i - 1]) * (limit - fprs[i - 1]) / (fprs[i] - fprs[i - 1])
        fprs, pros = np.append(fprs[:i], limit), np.append(pros[:i], p)
    return np.trapezoid(pros, fprs) / limit


def ref_aupro_binned(maps, masks, limit=0.3, steps=200):
    """The loop of the MuSc / APRIL-GAN / AnomalyCLIP repositories (cal_pro_score)."""
    regions = ref_regions(masks, 8)
    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    for th in np.arange(lo, hi, (hi - lo) / steps):
        pred = maps > th
        pros.append(np.mean([pred[i][r].sum() / r.sum() for i, r in regions]))
        fprs.append(np.logical_and(~masks, pred).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[keep])


# ----------------------------------------------------------------------------- data


def blob_set(seed, n=6, size=24, decimals=2):
    """Maps with a few blobs (incl. diagonal-only contacts, single pixels), some normal images."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    masks = smooth > np.quantile(smooth, 0.9)
    masks[: n // 3] = False  # normal images
    masks[-1, 2, 2] = masks[-1, 3, 3] = True  # touch only diagonally
    masks[-1, 2, 3] = masks[-1, 3, 2] = False
    masks[-1, 0, size - 1] = True  # a one-pixel region
    maps = rng.random((n, size, size)) + 0.8 * masks + 0.3 * smooth
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps.astype(np.float32), masks


def tied_set(seed, n=6, size=24):
    """blob_set's masks with a handful of tied scores of both signs, -0.0 and +0.0 among them."""
    maps, masks = blob_set(seed, n, size, decimals=None)
    maps = np.round(4 * maps - 2) / 2
    maps[(maps == 0) & (np.random.default_rng(seed).random(maps.shape) < 0.5)] = -0.0
    return maps, masks


def assert_equal_to_references(got, maps, masks):
    y, s = masks.ravel(), maps.ravel()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert got["pixel_f1_max"] == pytest.approx(ref_f1_max(y, s), abs=1e-6)
    assert got["pixel_aupro"] == pytest.approx(ref_aupro(maps, masks), abs=1e-6)
    assert got["pixel_aupro_binned"] == pytest.approx(ref_aupro_binned(maps, masks), abs=1e-6)


# ----------------------------------------------------------------------------- image metrics


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.35
    s = np.round(rng.random(300) + 0.3 * y, 2)
    if seed == 4:
        s = rng.integers(0, 4, 300) + y  # heavy ties
    got = image_metrics(s, y.astype(int))
    assert got["image_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert got["image_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert got["image_f1_max"] == pytest.approx(ref_f1_max(y, s), abs=1e-6)


def test_image_metrics_perfect_and_constant():
    y = np.array([0, 0, 1, 1, 1])
    assert image_metrics(np.array([0.1, 0.2, 0.5, 0.6, 0.9]), y) == {
        "image_auroc": 1.0,
        "image_ap": 1.0,
        "image_f1_max": 1.0,
    }
    got = image_metrics(np.full(5, 0.7), y)
    assert got["image_auroc"] == 0.5
    assert got["image_ap"] == pytest.approx(0.6)
    assert got["image_f1_max"] == pytest.approx(2 * 0.6 / 1.6)


@pytest.mark.parametrize("labels", [np.zeros(4, int), np.ones(4, int)])
def test_image_metrics_one_class_is_undefined(labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = image_metrics(np.array([0.1, 0.4, 0.2, 0.9]), labels)
    assert set(got) == {"image_auroc", "image_ap", "image_f1_max"}
    assert all(math.isnan(v) for v in got.values())
    assert math.isnan(UNDEFINED)


# ----------------------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_equal_sklearn_and_reference(seed):
    maps, masks = blob_set(seed)
    got = pixel_metrics(maps, masks)
    y, s = masks.ravel(), maps.ravel()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert got["pixel_f1_max"] == pytest.approx(ref_f1_max(y, s), abs=1e-6)
    assert got["pixel_aupro"] == pytest.approx(ref_aupro(maps, masks), abs=1e-6)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_exact_without_ties_and_connectivity(connectivity, limit):
    maps, masks = blob_set(7, n=5, size=16, decimals=None)
    got = aupro(maps, masks, limit, connectivity=connectivity)
    assert got == pytest.approx(ref_aupro(maps, masks, limit, connectivity), abs=1e-6)


def test_connectivity_matters_on_diagonal_contacts():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = masks[0, 2, 1] = True
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 0, 0] = 1.0  # found: the pixel that touches the rest only diagonally
    assert aupro(maps, masks, connectivity=8) == pytest.approx(ref_aupro(maps, masks, 0.3, 8))
    assert aupro(maps, masks, connectivity=4) == pytest.approx(ref_aupro(maps, masks, 0.3, 4))
    assert aupro(maps, masks, connectivity=4) != aupro(maps, masks, connectivity=8)


def test_list_input_of_mixed_sizes_equals_pooled_sklearn():
    rng = np.random.default_rng(3)
    maps = [np.round(rng.random((h, w)), 2) for h, w in [(8, 12), (16, 16), (5, 7)]]
    masks = [m > 0.8 for m in maps]
    masks[1][:] = False
    got = pixel_metrics(maps, [m.astype(np.uint8) for m in masks])
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([m.ravel() for m in maps])
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert got["pixel_aupro"] == pytest.approx(ref_aupro(maps, masks), abs=1e-6)
    assert got["pixel_f1_max"] == pytest.approx(ref_f1_max(y, s), abs=1e-6)


def test_perfect_and_constant_maps():
    _, masks = blob_set(1)
    perfect = pixel_metrics(masks.astype(np.float32), masks)
    assert perfect == pytest.approx(
        {"pixel_auroc": 1.0, "pixel_ap": 1.0, "pixel_f1_max": 1.0, "pixel_aupro": 1.0}
    )
    constant = pixel_metrics(np.zeros(masks.shape), masks)
    assert constant["pixel_auroc"] == 0.5
    assert constant["pixel_ap"] == pytest.approx(masks.mean())
    # the curve jumps from (0, 0) to (1, 1): interpolated at 0.3 it is 0.3, area 0.045
    assert constant["pixel_aupro"] == pytest.approx(0.15)
    assert math.isnan(aupro_binned(np.zeros(masks.shape), masks))


def test_hand_made_aupro():
    # Regions {a}, {b}; a scores above all (tied) normal pixels, b below them.
    masks = np.zeros((1, 3, 5), bool)
    masks[0, 0, 0] = masks[0, 2, 4] = True
    maps = np.full((1, 3, 5), 0.5, np.float32)
    maps[0, 0, 0], maps[0, 2, 4] = 1.0, 0.0
    # PRO is 0.5 from FPR 0 to FPR 1, so the normalised area is 0.5 for any limit.
    assert aupro(maps, masks, 0.3) == pytest.approx(0.5)
    assert aupro(maps, masks, 1.0) == pytest.approx(0.5)


def test_pixel_undefined_cases():
    maps = np.random.default_rng(0).random((3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = pixel_metrics(maps, np.zeros(maps.shape, bool), with_binned_aupro=True)
        every = pixel_metrics(maps, np.ones(maps.shape, bool))
    assert len(none) == 5 and all(math.isnan(v) for v in none.values())
    assert len(every) == 4 and all(math.isnan(v) for v in every.values())


def test_compute_metrics_combines_and_validates():
    maps, masks = blob_set(2)
    labels = masks.any(axis=(1, 2))
    scores = maps.reshape(len(maps), -1).max(axis=1)
    out = compute_metrics(scores, labels, maps, masks, with_binned_aupro=True)
    assert out == {
        **image_metrics(scores, labels),
        **pixel_metrics(maps, masks, with_binned_aupro=True),
    }
    assert set(compute_metrics(scores, labels)) == {"image_auroc", "image_ap", "image_f1_max"}
    only_normal = compute_metrics(scores, np.zeros_like(labels), maps, np.zeros_like(masks))
    assert len(only_normal) == 7 and all(math.isnan(v) for v in only_normal.values())
    with pytest.raises(ValueError, match="both"):
        compute_metrics(scores, labels, maps)


def test_invalid_inputs_raise():
    maps, masks = blob_set(0, n=3, size=8)
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(maps, masks[:, :4])
    with pytest.raises(ValueError, match="0/1"):
        pixel_metrics(maps, masks * 0.5)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(bad, masks)
    with pytest.raises(ValueError, match="limit"):
        aupro(maps, masks, 0.0)
    with pytest.raises(ValueError, match="labels"):
        image_metrics(np.zeros(3), np.zeros(4))


# ----------------------------------------------------------------------------- binned AUPRO


@pytest.mark.parametrize("seed", range(3))
def test_aupro_binned_equals_the_field_loop_and_is_close_to_exact(seed):
    maps, masks = blob_set(seed, n=8, size=32, decimals=None)
    got = aupro_binned(maps, masks)
    assert got == pytest.approx(ref_aupro_binned(maps, masks), abs=1e-6)
    assert got == pytest.approx(aupro(maps, masks), abs=0.05)
    assert aupro_binned(maps, masks, 0.1, steps=50) == pytest.approx(
        ref_aupro_binned(maps, masks, 0.1, steps=50), abs=1e-6
    )


# ----------------------------------------------------------------------------- memory bound


@pytest.fixture
def walk_log(monkeypatch):
    """Records the bytes of every range the walk gathers and the buckets it histograms."""
    log = {"gathered": [], "histogrammed": []}
    gather, tally_bucket = pixelpasses.gather, pixelpasses.tally_bucket

    def logged_gather(*args):
        out = gather(*args)
        log["gathered"].append(sum(a.nbytes for a in out))
        return out

    def logged_tally_bucket(*args):
        log["histogrammed"].append(args[-1])
        return tally_bucket(*args)

    monkeypatch.setattr(pixelpasses, "gather", logged_gather)
    monkeypatch.setattr(pixelpasses, "tally_bucket", logged_tally_bucket)
    return log


def shrink(monkeypatch, range_bytes, block, chunk):
    monkeypatch.setattr(metrics, "RANGE_BYTES", range_bytes)
    monkeypatch.setattr(metrics, "BLOCK_SIZE", block)
    monkeypatch.setattr(pixelpasses, "CHUNK_PIXELS", chunk)


@pytest.mark.parametrize(
    "data", [tied_set, lambda seed: blob_set(seed, decimals=None)], ids=["tied", "continuous"]
)
@pytest.mark.parametrize(
    "range_bytes, block, chunk",
    [(2**30, 2**20, 2**20), (4096, 64, 2000), (160, 3, 1), (12, 1, 1)],
    ids=["one range", "a few ranges", "many ranges", "one bucket each"],
)
def test_walk_in_small_ranges_equals_the_references(
    monkeypatch, walk_log, data, range_bytes, block, chunk
):
    maps, masks = data(5)
    shrink(monkeypatch, range_bytes, block, chunk)
    assert_equal_to_references(pixel_metrics(maps, masks, with_binned_aupro=True), maps, masks)
    assert all(0 < gathered <= range_bytes for gathered in walk_log["gathered"])
    if range_bytes == 2**30:
        assert len(walk_log["gathered"]) == 1 and not walk_log["histogrammed"]
    else:
        assert len(walk_log["gathered"]) + len(walk_log["histogrammed"]) > 3


def test_bucket_larger_than_a_range_is_histogrammed(monkeypatch, walk_log):
    _, masks = blob_set(1)
    maps = np.full(masks.shape, 0.25, np.float32)
    maps[:, :, :3], maps[:, :, -3:] = 0.5, 0.75  # each value in a bucket of its own
    maps[masks] += 0.25
    shrink(monkeypatch, 400, 2, 1000)  # 100 negatives per range; each tie holds more
    assert_equal_to_references(pixel_metrics(maps, masks, with_binned_aupro=True), maps, masks)
    assert len(walk_log["histogrammed"]) == 4 and not walk_log["gathered"]
