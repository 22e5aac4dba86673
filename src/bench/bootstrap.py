"""Paired bootstrap over a category's test images, cheap enough to run with every unit.

A gain over ``none`` is only worth printing with its uncertainty. The uncertainty that a run can
measure is that of its test set: which images happened to be in it. So a unit's metrics are
recomputed on ``resamples`` bootstrap resamples of its test images (stratified: normal and
anomalous images are drawn separately, so that every resample defines every metric), and the
resamples of a block are drawn from a seed made of the run's seed, the category and the scope
alone. Every refiner of a block therefore sees the *same* resampled images: the difference of
two refiners' replicates is a paired bootstrap replicate of the gain (``bench.gains``).

Cost. Recomputing exact pixel metrics 1000 times is out of the question, so each image is reduced
once to histograms of its pixel scores: normal pixels, anomalous pixels and, for AUPRO, the summed
``1 / |region|`` of its anomalous pixels (a region never spans two images, so resampling images
resamples whole regions and each copy counts again in the region total). A resample with weights
``w`` (how often each image was drawn) is then the weighted sum ``w @ H``, and its metrics are read
off one cumulative walk down the bins: one matrix product and a few (resamples × bins) array
operations per metric family, instead of a pass over pixels. AUPRO needs no scheme of its own:
its PRO curve is a weighted ROC curve, so the region-weight histogram makes it one more weighted
sum. Pixels are read on a grid of about 128×128 per image (every 2nd row and column at 256 px,
every 4th at 518), and the bins adapt to the unit: a fine histogram of 2^16 bins over the span of
the scores' order-preserving float32 keys (so resolution follows the scale, as floats do) is cut
into ``bins`` coarse bins, each holding at most 2/bins of the normal and 2/bins of the anomalous
pixels. The binned metrics differ from the exact ones by up to about 0.7 points (AP, F1-max;
AUROC 0.01, AUPRO 0.3; ``tests/bench/test_bootstrap.py``) on sets with many anomalous pixels; with
few, more (a 64-px synthetic category with 4 small defects in groups 2..k: AP 1.8 points off, up to
10 in one resample, the gain's interval ends 0.4 points from exact replicates'). Intervals are centred on the exact
value (``bench.gains``), so this error only touches their width, and the per-group metrics, which
are binned. ``benchmarks/test_bootstrap_speed.py`` measures the cost as a fraction of the exact
metrics' time. Image metrics are bootstrapped exactly (one bin per distinct image score).

The same histograms give per-group pixel metrics (``UnitStatistics.groups``): a group is a 0/1 weight
vector, so PGT's progress from group to group costs nothing more to log.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

RESAMPLES = 1000  # default number of bootstrap resamples (RunConfig.bootstrap)
BINS = 256  # coarse bins of the pixel-score histograms
SIDE = 128  # pixel histograms read every (side // SIDE)-th row and column: about SIDE² pixels per image
FINE_BITS = 16  # fine histogram: 2^16 bins over the span of the keys
GROUP_PREFIX = "group_"  # per-group metrics (group_pixel_ap): a series, one value per PGT group, step = group
FPR_LIMIT = 0.3  # AUPRO is integrated up to this false positive rate, as in bench.metrics
_EIGHT = ndimage.generate_binary_structure(2, 2)  # 8-connected regions, as bench.metrics
_SAMPLE = 7  # the fine histogram of normal pixels counts every 7th pixel


@dataclass(frozen=True)
class Histograms:
    """Per-image histograms over shared bins, lowest scores in the first bin."""

    negatives: np.ndarray  # (N, B) normal pixels per bin
    positives: np.ndarray  # (N, B) anomalous pixels per bin
    weights: np.ndarray  # (N, B) summed 1/|region| of the anomalous pixels per bin
    regions: np.ndarray  # (N,) ground-truth regions per image

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Pixel metrics of each row of image ``weights`` (R, N)."""
        weights = weights.T.astype(np.float32)
        return binned_metrics(self.negatives.T @ weights, self.positives.T @ weights, self.weights.T @ weights,
                              self.regions @ weights)


def pixel_histograms(maps: np.ndarray, masks: np.ndarray, bins: int = BINS, stride: int | None = None) -> Histograms:
    """Histograms of each image's pixel scores; ``maps`` (N, H, W) float, ``masks`` (N, H, W) bool.

    One pass over every ``stride``-th row and column (default ``max(1, H // SIDE)``: 1 up to 255
    px, 2 at 256, 4 at 518; maps are smooth at that scale, being upsampled from patch grids or
    refined at the backbone's input size): order-preserving keys, a pooled fine histogram that
    places the coarse cuts, then one ``bincount`` of (image, coarse bin). Regions are the
    8-connected components of the subsampled masks.
    """
    stride = stride or max(1, np.shape(maps)[1] // SIDE)
    masks = np.ascontiguousarray(np.asarray(masks, bool)[:, ::stride, ::stride])
    n, per = len(masks), masks[0].size
    keys = _unsigned_keys(np.asarray(maps, np.float32)[:, ::stride, ::stride])
    lo = keys.min()
    shift = max(0, int(keys.max() - lo).bit_length() - FINE_BITS)
    fine = keys
    fine -= lo
    fine >>= np.uint32(shift)
    flat_mask = masks.reshape(-1)
    n_fine = int(fine.max()) + 1
    pos_fine = np.bincount(fine[flat_mask], minlength=n_fine)
    neg_fine = np.bincount(fine[::_SAMPLE], minlength=n_fine)  # where the normal pixels lie: a sample is enough
    half = bins // 2  # a coarse bin ends where either class passes one of its half-bins quantiles
    below = lambda counts: np.floor(half * (np.cumsum(counts) - counts) / max(counts.sum(), 1))  # noqa: E731
    lut = (below(neg_fine) + below(pos_fine)).astype(np.int32)
    n_bins = int(lut[-1]) + 1
    coarse = lut.take(fine).reshape(n, per)
    coarse += np.arange(0, n * n_bins, n_bins, dtype=np.int32)[:, None]
    coarse = coarse.reshape(-1)
    total = np.bincount(coarse, minlength=n * n_bins)
    sizes, regions = np.zeros(flat_mask.sum()), np.zeros(n, np.float32)
    start = 0
    for i in np.flatnonzero(masks.reshape(n, -1).any(1)):  # 8-connected regions, image by image
        labels, regions[i] = ndimage.label(masks[i], _EIGHT)
        labels = labels[masks[i]]
        sizes[start : start + labels.size] = np.bincount(labels)[labels]
        start += labels.size
    positives = np.bincount(coarse[flat_mask], minlength=n * n_bins)
    weights = np.bincount(coarse[flat_mask], 1.0 / sizes, minlength=n * n_bins)
    shape, as32 = (n, n_bins), (lambda a: a.reshape(shape).astype(np.float32))  # noqa: E731
    return Histograms(as32(total - positives), as32(positives), as32(weights), regions)


def _unsigned_keys(scores: np.ndarray) -> np.ndarray:
    """Flat uint32 keys ordered as the float32 ``scores`` (``bench.pixelpasses.score_keys`` made unsigned,
    in place: the sign bit set for non-negative floats, every bit flipped for negative ones)."""
    keys = np.add(scores, np.float32(0.0)).reshape(-1).view(np.uint32)  # a copy; -0.0 + 0.0 = +0.0
    flip = keys >> np.uint32(31)
    np.negative(flip, out=flip)
    flip |= np.uint32(2**31)
    keys ^= flip
    return keys


def binned_metrics(neg: np.ndarray, pos: np.ndarray, weight: np.ndarray | None = None,
                   regions: np.ndarray | None = None, fpr_limit: float = FPR_LIMIT) -> dict[str, np.ndarray]:
    """AUROC, AP, F1-max (and AUPRO with ``weight`` and ``regions``) of columns of binned counts.

    ``neg``, ``pos`` (B, R): counts per bin (lowest scores first) of R weighted sets; a bin is one
    tied step of the walk down the scores, as in ``bench.metrics``. Bins run along the first axis
    so that each cumulative sum adds whole rows. Sets without negatives or positives give NaN.
    """
    neg, pos = neg[::-1], pos[::-1]  # highest scores first
    n_neg, n_pos = neg.sum(0), pos.sum(0)
    fp, tp = np.cumsum(neg, 0), np.cumsum(pos, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"auroc": np.einsum("br,br->r", neg, 2 * tp - pos) / (2 * n_neg * n_pos),
               "ap": np.einsum("br,br->r", pos, tp / np.maximum(tp + fp, 1)) / n_pos,
               "f1_max": (2 * tp / (tp + fp + n_pos)).max(0)}
        if weight is not None:
            weight = weight[::-1]
            limit = fpr_limit * n_neg
            covered = np.clip(limit - fp + neg, 0, neg)  # the part of each step within the FPR limit
            height = np.cumsum(weight, 0) - weight * (1 - covered / (2 * np.maximum(neg, 1)))
            out["aupro"] = np.einsum("br,br->r", covered, height) / (limit * regions)
    undefined = (n_neg == 0) | (n_pos == 0)
    return {k: np.where(undefined, np.nan, v) for k, v in out.items()}


def image_metrics(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Image metrics of each row of image ``weights`` (R, N), exact: one bin per distinct score."""
    _, inverse = np.unique(np.asarray(scores, np.float64), return_inverse=True)
    onehot = np.zeros((len(scores), inverse.max() + 1))
    onehot[np.arange(len(scores)), inverse] = 1
    anomalous = (np.asarray(labels) == 1)[:, None]
    return binned_metrics((onehot * ~anomalous).T @ weights.T, (onehot * anomalous).T @ weights.T)


def resample_weights(labels: np.ndarray, index: np.ndarray, resamples: int, seed: tuple[int, ...]) -> np.ndarray:
    """(1 + resamples, N) image weights: row 0 is the scope itself (each image in ``index`` once),
    then how often each image is drawn in each resample, normal and anomalous images drawn
    separately (stratified). The same ``seed`` and ``index`` always give the same weights."""
    rng = np.random.default_rng(list(seed))
    weights = np.zeros((1 + resamples, len(labels)))
    weights[0, index] = 1
    for cls in (0, 1):
        members = index[np.asarray(labels)[index] == cls]
        if len(members):
            draws = rng.integers(0, len(members), (resamples, len(members))) + np.arange(resamples)[:, None] * len(members)
            weights[1:, members] = np.bincount(draws.reshape(-1), minlength=resamples * len(members)).reshape(resamples, -1)
    return weights


def block_seed(seed: int, category: str, scope: str) -> tuple[int, int, int]:
    """The resampling seed of a block: the same for every refiner and contamination of it."""
    return (int(seed), zlib.crc32(category.encode()), zlib.crc32(scope.encode()))


@dataclass(frozen=True)
class UnitStatistics:
    """What a unit logs beyond its exact metrics."""

    replicates: dict[str, np.ndarray]  # metric -> (1 + resamples,): the binned value, then one per resample
    groups: dict[str, list[float]]  # GROUP_PREFIX + "pixel_ap" -> binned value of each PGT group

    def series(self) -> dict[str, dict[int, float]]:
        """Per-group metrics as MLflow series, step = group number (1 = first group)."""
        return {key: dict(enumerate(values, start=1)) for key, values in self.groups.items()}


def unit_statistics(scores: np.ndarray, labels: np.ndarray, maps, masks, groups: list[np.ndarray], seed: int,
                    category: str, resamples: int = RESAMPLES) -> UnitStatistics:
    """Bootstrap replicates of a unit's metrics, named as ``bench.evaluation.evaluate`` names them
    (whole stream, and ``_g2k`` for groups 2..k; none with ``resamples`` 0), and its per-group
    pixel metrics; pixel metrics only with ``masks``. ``maps`` and ``masks``: (N, H, W) arrays or
    CPU tensors at the evaluation size."""
    hist = pixel_histograms(np.asarray(maps), np.asarray(masks)) if masks is not None else None
    scopes = {"": np.arange(len(labels))}
    if len(groups) > 1:
        scopes["_g2k"] = np.sort(np.concatenate(groups[1:]))
    replicates = {}
    for suffix, index in scopes.items() if resamples else ():
        weights = resample_weights(labels, index, resamples, block_seed(seed, category, suffix or "stream"))
        values = {f"image_{k}": v for k, v in image_metrics(scores, labels, weights).items()}
        if hist is not None:
            values.update({f"pixel_{k}": v for k, v in hist.metrics(weights).items()})
        replicates.update({f"{k}{suffix}": v.astype(np.float32) for k, v in values.items()})
    per_group = {}
    if hist is not None:
        indicator = np.zeros((len(groups), len(labels)))
        for g, index in enumerate(groups):
            indicator[g, index] = 1
        per_group = {f"{GROUP_PREFIX}pixel_{k}": [float(x) for x in v] for k, v in hist.metrics(indicator).items()}
    return UnitStatistics(replicates, per_group)


def save(path: Path, replicates: dict[str, np.ndarray]) -> Path:
    """Write replicates as an ``.npz`` file (a unit's ``bootstrap.npz`` artifact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **replicates)
    path.write_bytes(buffer.getvalue())
    return path


def load(path: Path) -> dict[str, np.ndarray]:
    """Replicates saved by ``save``."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
