"""Image and pixel anomaly-detection metrics: exact, vectorised, memory-bounded.

Every metric here is computed from two sorted 1-D arrays, the scores of the negatives (normal
images or pixels) and those of the positives (anomalous ones), so a whole dataset is never sorted
with an index array and no curve is binned:

- AUROC is tie-aware, equal to ``sklearn.metrics.roc_auc_score``.
- AP is step-wise and tie-aware, equal to ``sklearn.metrics.average_precision_score``.
- F1-max is the largest ``2PR / (P + R)`` over the points of ``precision_recall_curve``
  (0 where ``P + R = 0``). The best threshold always sits on a positive score, so only those are
  visited.
- AUPRO (``aupro``, ``pixel_aupro``) is exact: the ground-truth regions are the connected
  components of each mask (8-connectivity by default, as in the MVTec AD evaluation code,
  anomalib's ``cv2.connectedComponents`` and skimage's ``measure.label`` used by MuSc, APRIL-GAN and
  AnomalyCLIP). The PRO at a threshold is the mean over all regions of the fraction of region
  pixels scoring at or above it, a step function evaluated at every distinct score, against the FPR
  on normal pixels. The curve is integrated with the trapezoid rule up to ``fpr_limit``
  (interpolated there) and divided by ``fpr_limit``.
- ``aupro_binned`` is the field's 200-threshold variant, offered so that published numbers can be
  compared like with like.

Pixel scores are evaluated in float32 (image scores in float64). A metric that is undefined for
the given labels (one class only; no anomalous pixel) is returned as ``UNDEFINED`` (NaN), never
as 0 and never as an exception; report it as undefined.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

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

Maps = np.ndarray | Sequence[np.ndarray]

_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), dtype=bool)}


# ----------------------------------------------------------------------------- input handling


def _as_bool(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{what} must be boolean or 0/1 valued (binarise resized masks first)")
    return mask != 0


def _pool(maps: Maps, masks: Maps) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Pooled float32 scores, pooled bool labels and the per-image shapes; copies only if needed."""
    if isinstance(maps, np.ndarray) and isinstance(masks, np.ndarray):
        if maps.ndim != 3 or maps.shape != masks.shape:
            raise ValueError(
                f"maps and masks must both be (N, H, W) with equal shapes, got {maps.shape} and "
                f"{masks.shape}"
            )
        scores = np.ascontiguousarray(maps, dtype=np.float32).reshape(-1)
        labels = np.ascontiguousarray(_as_bool(masks, "masks")).reshape(-1)
        return scores, labels, [maps.shape[1:]] * maps.shape[0]
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} maps but {len(masks)} masks")
    shapes = [np.shape(m) for m in maps]
    for i, (shape, mask) in enumerate(zip(shapes, masks)):
        if len(shape) != 2 or np.shape(mask) != shape:
            raise ValueError(f"map {i} is {shape} but its mask {np.shape(mask)}; want equal 2-D")
    total = sum(h * w for h, w in shapes)
    scores, labels = np.empty(total, np.float32), np.empty(total, bool)
    offset = 0
    for (h, w), m, k in zip(shapes, maps, masks):
        scores[offset : offset + h * w] = np.asarray(m).reshape(-1)
        labels[offset : offset + h * w] = _as_bool(k, "masks").reshape(-1)
        offset += h * w
    return scores, labels, shapes


def _region_ids(labels: np.ndarray, shapes: list[tuple[int, int]], connectivity: int) -> np.ndarray:
    """Global connected-component id of every positive pixel, in pooled (C) order."""
    if connectivity not in _STRUCTURE:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    ids, n_regions, offset = [], 0, 0
    for h, w in shapes:  # one loop over images; the work inside is vectorised
        mask = labels[offset : offset + h * w].reshape(h, w)
        offset += h * w
        if mask.any():
            lab, n = ndimage.label(mask, structure=_STRUCTURE[connectivity])
            ids.append(lab[mask].astype(np.int64) + (n_regions - 1))
            n_regions += n
    return np.concatenate(ids) if ids else np.empty(0, np.int64)


def _check_finite(*sorted_arrays: np.ndarray) -> None:
    for a in sorted_arrays:  # sorted: NaN and +-inf can only sit at the ends
        if a.size and not (np.isfinite(a[0]) and np.isfinite(a[-1])):
            raise ValueError("scores contain NaN or infinity")


def _split_sorted(
    scores: np.ndarray, labels: np.ndarray, region: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Ascending negative scores, ascending positive scores and, with ``region``, PRO weights.

    The weight of a positive pixel is ``1 / (n_regions * |its region|)``, so that the PRO at a
    threshold is the sum of the weights of the positives at or above it.
    """
    neg = scores[~labels]
    neg.sort()
    pos = scores[labels]
    weight = None
    if region is None:
        pos.sort()
    else:
        sizes = np.bincount(region)
        weight = 1.0 / (sizes.size * sizes[region].astype(np.float64))
        order = np.argsort(pos)
        pos, weight = pos[order], weight[order]
    _check_finite(neg, pos)
    return neg, pos, weight


def _unique_sorted(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of an ascending array, the index of their first occurrence, their counts."""
    if a.size == 0:
        return a, np.empty(0, np.int64), np.empty(0, np.int64)
    first = np.flatnonzero(np.concatenate(([True], a[1:] != a[:-1])))
    return a[first], first, np.diff(np.append(first, a.size))


def _suffix_sum(weight: np.ndarray) -> np.ndarray:
    """``s[k] = weight[k:].sum()`` for k = 0..len(weight)."""
    return np.append(np.cumsum(weight[::-1])[::-1], 0.0)


# ----------------------------------------------------------------------------- the metrics


def _ranking_metrics(neg: np.ndarray, pos: np.ndarray) -> tuple[float, float, float]:
    """(AUROC, AP, F1-max) from sorted negative and positive scores."""
    n_neg, n_pos = neg.size, pos.size
    if n_neg == 0 or n_pos == 0:
        return UNDEFINED, UNDEFINED, UNDEFINED
    u, first, count = _unique_sorted(pos)
    tp = n_pos - first  # positives >= u
    below = np.searchsorted(neg, u, side="left")  # negatives < u
    upto = np.searchsorted(neg, u, side="right")  # negatives <= u
    fp = n_neg - below  # negatives >= u
    auroc = int((count * (below + upto)).sum()) / (2.0 * n_pos * n_neg)  # ties count one half
    ap = float(np.sum(count / n_pos * (tp / (tp + fp))))  # recall step x precision
    f1 = float(np.max(2.0 * tp / (tp + fp + n_pos)))  # 2PR/(P+R) = 2TP/(2TP+FP+FN)
    return auroc, ap, f1


def _aupro_exact(neg: np.ndarray, pos: np.ndarray, weight: np.ndarray, limit: float) -> float:
    n_neg = neg.size
    if n_neg == 0 or pos.size == 0:
        return UNDEFINED
    pro_from = _suffix_sum(weight)
    # Only distinct negative scores move the FPR; segments that start beyond the limit add nothing.
    start = max(0, int(np.floor(n_neg * (1.0 - limit))) - 1)
    u, first, count = _unique_sorted(neg[start:])
    below = start + first
    below[0] = np.searchsorted(neg, u[0], side="left")  # its ties may begin before `start`
    upto = start + first + count
    # Segment from the point just above u to the point at u; both coordinates linear in between.
    f_a, f_b = (n_neg - upto) / n_neg, (n_neg - below) / n_neg
    p_a = pro_from[np.searchsorted(pos, u, side="right")]  # PRO of positives > u
    p_b = pro_from[np.searchsorted(pos, u, side="left")]  # PRO of positives >= u
    f_a_clip, f_b_clip = np.minimum(f_a, limit), np.minimum(f_b, limit)
    p_b_clip = p_a + (p_b - p_a) * (f_b_clip - f_a) / (f_b - f_a)
    area = np.sum((f_b_clip - f_a_clip) * (p_a + p_b_clip)) / 2.0
    return float(area / limit)


def _aupro_field(
    neg: np.ndarray, pos: np.ndarray, weight: np.ndarray, limit: float, steps: int
) -> float:
    n_neg = neg.size
    if n_neg == 0 or pos.size == 0:
        return UNDEFINED
    lo, hi = min(neg[0], pos[0]), max(neg[-1], pos[-1])
    if hi == lo:
        return UNDEFINED
    thresholds = np.arange(lo, hi, (hi - lo) / steps)  # as the repos: float64, max excluded
    # Largest float32 <= each threshold: for float32 scores, s > t32 exactly when s > t.
    t32 = thresholds.astype(np.float32)
    t32 = np.where(t32 > thresholds, np.nextafter(t32, np.float32(-np.inf)), t32)
    fpr = (n_neg - np.searchsorted(neg, t32, side="right")) / n_neg  # normal pixels > t
    pro = _suffix_sum(weight)[np.searchsorted(pos, t32, side="right")]
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
    labels = _as_bool(np.asarray(labels).reshape(-1), "labels")
    if scores.shape != labels.shape:
        raise ValueError(f"got {scores.size} scores but {labels.size} labels")
    auroc, ap, f1 = _ranking_metrics(*_split_sorted(scores, labels)[:2])
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
    scores, labels, shapes = _pool(maps, masks)
    region = _region_ids(labels, shapes, connectivity)
    neg, pos, weight = _split_sorted(scores, labels, region)
    del scores, labels, region
    auroc, ap, f1 = _ranking_metrics(neg, pos)
    out = {
        "pixel_auroc": auroc,
        "pixel_ap": ap,
        "pixel_f1_max": f1,
        "pixel_aupro": _aupro_exact(neg, pos, weight, aupro_fpr_limit),
    }
    if with_binned_aupro:
        out["pixel_aupro_binned"] = _aupro_field(neg, pos, weight, aupro_fpr_limit, 200)
    return out


def aupro(maps: Maps, masks: Maps, fpr_limit: float = 0.3, *, connectivity: int = 8) -> float:
    """Exact AUPRO up to ``fpr_limit``, normalised by it (see the module docstring)."""
    _check_limit(fpr_limit)
    scores, labels, shapes = _pool(maps, masks)
    neg, pos, weight = _split_sorted(scores, labels, _region_ids(labels, shapes, connectivity))
    return _aupro_exact(neg, pos, weight, fpr_limit)


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
    scores, labels, shapes = _pool(maps, masks)
    neg, pos, weight = _split_sorted(scores, labels, _region_ids(labels, shapes, connectivity))
    return _aupro_field(neg, pos, weight, fpr_limit, steps)


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
