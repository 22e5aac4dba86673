"""Image and pixel anomaly-detection metrics: exact, vectorised, memory-bounded.

Every metric is read off one walk down the scores, highest first (``_Curve``). Each step of the
walk is one distinct score (ties form one step), or a run of scores that only negatives have,
where the curves run straight; it carries how many negatives (normal images or pixels) and
positives (anomalous ones) it passes and, for AUPRO, the summed region weight of those positives:

- AUROC: trapezoids between consecutive ROC points, tied scores forming one point, so equal to
  ``sklearn.metrics.roc_auc_score``.
- AP: ``sum (R_n - R_(n-1)) P_n`` over the steps, equal to
  ``sklearn.metrics.average_precision_score``.
- F1-max: the largest ``2PR / (P + R)`` over the points of ``precision_recall_curve``.
- AUPRO (``aupro``, ``pixel_aupro``), exact: the ground-truth regions are the connected
  components of each mask (8-connectivity by default, as in the MVTec AD evaluation code,
  anomalib's ``cv2.connectedComponents`` and skimage's ``measure.label`` used by MuSc, APRIL-GAN and
  AnomalyCLIP). An anomalous pixel weighs ``1 / (|its region| * number of regions)``, so the PRO at
  a threshold (the mean over regions of the fraction of region pixels scoring at or above it) is
  the summed weight of the positives at or above it: the PRO curve is a weighted ROC curve. Its
  area up to ``fpr_limit`` (interpolated there, trapezoid rule) is divided by ``fpr_limit``.
- ``aupro_binned`` is the field's 200-threshold variant, offered so that published numbers can be
  compared like with like.

Pixel metrics never hold a per-pixel array of the whole set, so their memory does not grow with
it (the passes over the maps are ``bench.pixelpasses``). Pixel scores are compared as float32,
through an order-preserving int32 key. A first pass over the maps, a few images at a time, validates them, counts the regions and counts the negatives and
positives in each of 65,536 buckets of the key's top 16 bits. The buckets are cut, from the top,
into ranges that take at most ``RANGE_BYTES`` (1 GiB) once gathered, and each range costs one
more pass: the keys of its negatives (4 bytes each) and ``key << 32 | region size`` of its
positives (8 bytes) are gathered and sorted in place. The curves only bend at positive scores, so
the walk steps through the positives' distinct keys, a block at a time, and finds by binary search
the negatives at each and those between it and the next (which form one step). A single bucket
too large for a range (many tied scores) is counted instead by histograms of its keys' low 16
bits. Time is one sort of all pixels plus one pass over the maps per range (one for 2,162 maps of
256², about three at 518²).

Image scores are evaluated in float64. A metric that is undefined for the given labels (one class
only; no anomalous pixel) is returned as ``UNDEFINED`` (NaN), never as 0 and never as an
exception; report it as undefined.
"""

from __future__ import annotations

import numpy as np

from bench import pixelpasses as passes
from bench.pixelpasses import Maps

__all__ = [
    "UNDEFINED",
    "aupro",
    "aupro_binned",
    "compute_metrics",
    "image_metrics",
    "pixel_metrics",
]

UNDEFINED: float = float("nan")
"""Value of a metric that the labels do not define (test with ``math.isnan``)."""

RANGE_BYTES = 2**30  # gathered and sorted at once: 4 bytes a pixel, 8 more a positive one
BLOCK_SIZE = 2**20  # sorted positives handed to the walk at a time

# ----------------------------------------------------------------------------- the walk


class _Curve:
    """The metrics of a walk down the scores, fed a block of steps at a time.

    ``add(neg, pos, weight)`` takes the next steps, highest scores first: how many negatives and
    positives each passes and (for AUPRO) the positives' summed ``1 / |region|``. A step is one
    distinct score, or scores that only negatives have, over which the curves run straight.
    """

    def __init__(self, n_neg: int, n_pos: int, n_regions: int = 0, fpr_limit: float = 0.3):
        self.n_neg, self.n_pos, self.n_regions = n_neg, n_pos, n_regions
        self.fp_limit = fpr_limit * n_neg  # negatives above the threshold where AUPRO stops
        self.fp = self.tp = 0  # negatives and positives above the next step
        self.overlap = 0.0  # summed weight of the positives above the next step
        self.roc_area = 0  # twice the area under the ROC curve, in negative x positive pairs
        self.precision_sum = 0.0  # sum over steps of positives x precision
        self.f1_max = 0.0
        self.pro_area = 0.0  # area under the PRO curve up to the limit, in negatives x weight

    def add(self, neg: np.ndarray, pos: np.ndarray, weight: np.ndarray | None = None) -> None:
        fp = self.fp + np.cumsum(neg)  # passed at the end of each step
        tp = self.tp + np.cumsum(pos)
        self.roc_area += int(np.dot(neg, 2 * tp - pos))  # width x (height before + after)
        self.precision_sum += float(np.dot(pos, tp / np.maximum(tp + fp, 1)))
        self.f1_max = max(self.f1_max, float(np.max(2 * tp / (tp + fp + self.n_pos))))
        if weight is not None and self.fp < self.fp_limit:  # else past the limit for good
            overlap = self.overlap + np.cumsum(weight)
            # Each step runs from (fp - neg, overlap - weight) to (fp, overlap); the part of it
            # within the FPR limit is `covered` negatives wide.
            covered = np.clip(self.fp_limit - (fp - neg), 0, neg)
            rise = covered * weight / (2 * np.maximum(neg, 1))  # half the overlap gained there
            self.pro_area += float(np.dot(covered, overlap - weight + rise))
            self.overlap = float(overlap[-1])
        self.fp, self.tp = int(fp[-1]), int(tp[-1])

    def metrics(self) -> tuple[float, float, float, float]:
        """(AUROC, AP, F1-max, AUPRO); all ``UNDEFINED`` without negatives or positives."""
        if not (self.n_neg and self.n_pos):
            return UNDEFINED, UNDEFINED, UNDEFINED, UNDEFINED
        auroc = self.roc_area / (2 * self.n_neg * self.n_pos)
        aupro = self.pro_area / (self.fp_limit * self.n_regions) if self.n_regions else UNDEFINED
        return auroc, self.precision_sum / self.n_pos, self.f1_max, aupro


def _tally(negatives: np.ndarray, positives: np.ndarray) -> tuple[tuple[np.ndarray, ...], int]:
    """Steps of the walk through sorted positives (``key << 32 | region size``), and how many of
    the sorted negative keys ``negatives`` lie below the lowest of them.

    Highest first, each distinct positive key gives two steps: the negatives above it (down to
    the next higher positive key, or the top of ``negatives``), then the negatives, positives and
    summed 1/region size at it.
    """
    keys = (positives >> 32).astype(np.int32)
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    count = np.diff(first, append=keys.size)
    weight = np.add.reduceat(1.0 / (positives & 0xFFFFFFFF), first)
    distinct = keys[first][::-1]  # highest first
    edges = np.empty(2 * distinct.size + 1, np.int64)  # positions in `negatives`, descending
    edges[0] = negatives.size
    edges[1::2] = np.searchsorted(negatives, distinct, side="right")
    edges[2::2] = np.searchsorted(negatives, distinct, side="left")
    pos, w = np.zeros(2 * distinct.size, np.int64), np.zeros(2 * distinct.size)
    pos[1::2], w[1::2] = count[::-1], weight[::-1]
    return (-np.diff(edges), pos, w), int(edges[-1])


def _walk(maps: Maps, masks: Maps, connectivity: int, summary: passes.Summary, limit: float) -> _Curve:
    """The walk down every pixel score, a range of buckets at a time."""
    curve = _Curve(summary.n_neg, summary.n_pos, summary.n_regions, limit)
    if not (summary.n_neg and summary.n_pos):
        return curve  # undefined: nothing to walk
    cost = 4 * summary.negatives + 8 * summary.positives  # bytes of a bucket, gathered
    for start, stop in passes.ranges(cost, RANGE_BYTES):
        if cost[start:stop].sum() > RANGE_BYTES:
            curve.add(*passes.tally_bucket(maps, masks, connectivity, start))
        else:
            _walk_range(curve, *passes.gather(maps, masks, connectivity, start, stop, summary))
    return curve


def _walk_range(curve: _Curve, negatives: np.ndarray, positives: np.ndarray) -> None:
    """Walk one gathered range (sorted here, in place), its positives a block at a time."""
    negatives.sort()
    positives.sort()
    end, end_pos = negatives.size, positives.size
    while end_pos:  # each block cut where a key begins
        cut = positives[max(end_pos - BLOCK_SIZE, 0)] >> 32 << 32
        begin_pos = int(np.searchsorted(positives[:end_pos], cut))
        steps, end = _tally(negatives[:end], positives[begin_pos:end_pos])
        curve.add(*steps)
        end_pos = begin_pos
    curve.add(np.array([end]), np.zeros(1, np.int64), np.zeros(1))  # below every positive


def _aupro_binned(
    maps: Maps, masks: Maps, connectivity: int, summary: passes.Summary, limit: float, steps: int
) -> float:
    lo, hi = summary.lo, summary.hi
    if not (summary.n_neg and summary.n_pos) or hi == lo:
        return UNDEFINED
    thresholds = np.arange(lo, hi, (hi - lo) / steps)  # as the repos: max excluded
    # Largest float32 <= each threshold: for float32 scores, s > t32 exactly when s > t.
    t32 = thresholds.astype(np.float32)
    t32 = np.where(t32 > thresholds, np.nextafter(t32, np.float32(-np.inf)), t32)
    edges = passes.score_keys(t32)
    neg, weight = np.zeros(edges.size + 1, np.int64), np.zeros(edges.size + 1)
    for neg_keys, pos_keys, sizes in passes.scan(maps, masks, connectivity):
        passed = np.searchsorted(edges, neg_keys)  # how many thresholds each pixel is above
        neg += np.bincount(passed, minlength=edges.size + 1)
        passed = np.searchsorted(edges, pos_keys)
        weight += np.bincount(passed, 1.0 / sizes, minlength=edges.size + 1)
    fpr = np.cumsum(neg[::-1])[-2::-1] / summary.n_neg  # pixels above threshold j: passed > j
    pro = np.cumsum(weight[::-1])[-2::-1] / summary.n_regions
    keep = fpr < limit  # strict, as in the repos
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2 or fpr.max() == fpr.min():
        return UNDEFINED
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    return float(abs(np.trapezoid(pro, fpr)))


def _check_limit(limit: float) -> None:
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"the FPR limit must lie in (0, 1], got {limit}")


# ----------------------------------------------------------------------------- public API


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image AUROC, AP and F1-max of per-image ``scores`` against 0/1 ``labels`` (1 = anomalous).

    Returns keys ``image_auroc``, ``image_ap``, ``image_f1_max``; all are ``UNDEFINED`` (NaN)
    when ``labels`` hold one class only.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = passes.as_bool(np.asarray(labels).reshape(-1), "labels")
    if scores.shape != labels.shape:
        raise ValueError(f"got {scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    values, inverse = np.unique(scores, return_inverse=True)
    count = np.bincount(inverse, minlength=values.size)[::-1]  # highest value first
    pos = np.bincount(inverse[labels], minlength=values.size)[::-1]
    curve = _Curve(int(labels.size - labels.sum()), int(labels.sum()))
    curve.add(count - pos, pos)
    auroc, ap, f1, _ = curve.metrics()
    return {"image_auroc": auroc, "image_ap": ap, "image_f1_max": f1}


def pixel_metrics(
    maps: Maps,
    masks: Maps,
    aupro_fpr_limit: float = 0.3,
    *,
    connectivity: int = 8,
    with_binned_aupro: bool = False,
) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max and exact AUPRO over all pixels of a set, pooled.

    ``maps`` are float (N, H, W) or a list of (H, W) arrays; ``masks`` the matching boolean (or
    0/1) ground truth. AUPRO regions are ``connectivity``-connected components (8 or 4) of each
    mask. Returns keys ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``, ``pixel_aupro`` (plus
    ``pixel_aupro_binned`` when asked, see ``aupro_binned``); a metric is ``UNDEFINED`` (NaN) when
    the set has no anomalous or no normal pixel.
    """
    _check_limit(aupro_fpr_limit)
    summary = passes.summarise(maps, masks, connectivity)
    curve = _walk(maps, masks, connectivity, summary, aupro_fpr_limit)
    names = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
    out = dict(zip(names, curve.metrics()))
    if with_binned_aupro:
        out["pixel_aupro_binned"] = _aupro_binned(
            maps, masks, connectivity, summary, aupro_fpr_limit, 200
        )
    return out


def aupro(maps: Maps, masks: Maps, fpr_limit: float = 0.3, *, connectivity: int = 8) -> float:
    """Exact AUPRO up to ``fpr_limit``, normalised by it (see the module docstring)."""
    _check_limit(fpr_limit)
    summary = passes.summarise(maps, masks, connectivity)
    return _walk(maps, masks, connectivity, summary, fpr_limit).metrics()[3]


def aupro_binned(
    maps: Maps, masks: Maps, fpr_limit: float = 0.3, steps: int = 200, *, connectivity: int = 8
) -> float:
    """AUPRO as the MuSc / APRIL-GAN / AnomalyCLIP repositories compute it (``cal_pro_score``).

    Thresholds ``np.arange(min, max, (max - min) / steps)`` over all scores; a pixel is positive
    when its score is ``> threshold``; PRO is the mean overlap over all regions (skimage's default
    8-connectivity there); FPR on normal pixels; points with ``FPR < fpr_limit`` are kept, their
    FPR min-max rescaled to [0, 1] and the trapezoid area returned. It differs from the exact
    ``aupro`` by up to a few points; it is ``UNDEFINED`` where the exact one is, and for a
    constant map or fewer than two kept points.
    """
    _check_limit(fpr_limit)
    summary = passes.summarise(maps, masks, connectivity)
    return _aupro_binned(maps, masks, connectivity, summary, fpr_limit, steps)


def compute_metrics(
    image_scores: np.ndarray,
    labels: np.ndarray,
    maps: Maps | None = None,
    masks: Maps | None = None,
    *,
    aupro_fpr_limit: float = 0.3,
    with_binned_aupro: bool = False,
) -> dict[str, float]:
    """``image_metrics``, plus ``pixel_metrics`` when both ``maps`` and ``masks`` are given."""
    out = image_metrics(image_scores, labels)
    if (maps is None) != (masks is None):
        raise ValueError("pixel metrics need both maps and masks")
    if maps is not None:
        out |= pixel_metrics(maps, masks, aupro_fpr_limit, with_binned_aupro=with_binned_aupro)
    return out
