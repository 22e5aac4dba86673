"""Passes over a set of anomaly maps in bounded memory, for the pixel metrics (``bench.metrics``).

The set is read a few whole images at a time (``images``), validated, and each pixel score turned into an
int32 key that orders as the float32 score (``score_keys``). The first pass (``summarise``) counts the
negatives and positives in each of 65,536 buckets of the key's top 16 bits and the regions; the walk
down the scores then takes the buckets a range at a time (``ranges``), gathering each range's keys
(``gather``) or, for one bucket too large for a range, histogramming its keys' low bits (``tally_bucket``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Maps = np.ndarray | Sequence[np.ndarray]

CHUNK_PIXELS = 2**20  # pixels a pass over the maps handles at a time (whole images)
BUCKETS = 2**16  # buckets of the top 16 bits of a key

# Structuring elements for an (n, H, W) stack of masks: the middle plane connects pixels within
# an image, the empty outer planes keep images apart.
STRUCTURE = {
    c: np.pad(ndimage.generate_binary_structure(2, c // 4)[None], ((1, 1), (0, 0), (0, 0)))
    for c in (4, 8)
}



def as_bool(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{what} must be boolean or 0/1 valued (binarise resized masks first)")
    return mask != 0


def images(maps: Maps, masks: Maps) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The set a few whole images at a time: float32 scores and bool masks, both (n, H, W)."""
    if isinstance(maps, np.ndarray) and isinstance(masks, np.ndarray):
        if maps.ndim != 3 or maps.shape != masks.shape:
            raise ValueError(
                f"maps and masks must both be (N, H, W) with equal shapes, got {maps.shape} and "
                f"{masks.shape}"
            )
        step = max(1, CHUNK_PIXELS // max(1, maps.shape[1] * maps.shape[2]))
        for i in range(0, len(maps), step):
            yield np.asarray(maps[i : i + step], np.float32), as_bool(masks[i : i + step], "masks")
        return
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} maps but {len(masks)} masks")
    for i, (scores, mask) in enumerate(zip(maps, masks)):
        if np.ndim(scores) != 2 or np.shape(mask) != np.shape(scores):
            raise ValueError(
                f"map {i} is {np.shape(scores)} but its mask {np.shape(mask)}; want equal 2-D"
            )
        yield np.asarray(scores, np.float32)[None], as_bool(mask, "masks")[None]


def score_keys(scores: np.ndarray) -> np.ndarray:
    """Flat int32 keys ordered as the float32 ``scores`` (-0.0 and +0.0 share one).

    A non-negative float's bits already order as an int32; a negative one's order backwards, so
    its 31 low bits are flipped.
    """
    bits = np.add(scores, np.float32(0.0)).reshape(-1).view(np.int32)  # -0.0 + 0.0 = +0.0
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def scan(maps: Maps, masks: Maps, connectivity: int) -> Iterator[tuple[np.ndarray, ...]]:
    """One pass over the set, a few images at a time: the keys of the normal pixels, and the keys
    and region sizes of the anomalous ones."""
    for scores, mask in images(maps, masks):
        regions, _ = ndimage.label(mask, STRUCTURE[connectivity])
        regions, mask = regions.reshape(-1), mask.reshape(-1)
        keys = score_keys(scores)
        yield keys[~mask], keys[mask], np.bincount(regions)[regions[mask]]


def bucket_of(keys: np.ndarray) -> np.ndarray:
    """Bucket (0 to 2^16 - 1) of each key: its top 16 bits."""
    return (keys >> 16) + 2**15


@dataclass(frozen=True)
class Summary:
    """What the first pass learns: negatives and positives per key bucket, regions, score range."""

    negatives: np.ndarray
    positives: np.ndarray
    n_regions: int
    lo: np.float32
    hi: np.float32

    @property
    def n_neg(self) -> int:
        return int(self.negatives.sum())

    @property
    def n_pos(self) -> int:
        return int(self.positives.sum())


def summarise(maps: Maps, masks: Maps, connectivity: int) -> Summary:
    if connectivity not in STRUCTURE:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    negatives, positives = np.zeros(BUCKETS, np.int64), np.zeros(BUCKETS, np.int64)
    n_regions, lo, hi = 0, np.float32(np.inf), np.float32(-np.inf)
    for scores, mask in images(maps, masks):
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinity")
        buckets, mask_flat = bucket_of(score_keys(scores)), mask.reshape(-1)
        negatives += np.bincount(buckets[~mask_flat], minlength=BUCKETS)
        positives += np.bincount(buckets[mask_flat], minlength=BUCKETS)
        n_regions += ndimage.label(mask, STRUCTURE[connectivity])[1]
        if scores.size:
            lo, hi = min(lo, scores.min()), max(hi, scores.max())
    return Summary(negatives, positives, n_regions, lo, hi)


def ranges(cost: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Bucket ranges ``[start, stop)`` from the top that each cost at most ``budget``, or are one
    bucket that costs more; each ends at a bucket that costs something."""
    below = np.concatenate(([0], np.cumsum(cost)))  # below[b]: cost of the buckets under b
    stop = len(cost)
    while below[stop]:
        stop = int(np.searchsorted(below, below[stop]))  # past the free buckets on top
        start = min(int(np.searchsorted(below, below[stop] - budget)), stop - 1)
        yield start, stop
        stop = start


def gather(
    maps: Maps, masks: Maps, connectivity: int, start: int, stop: int, summary: Summary
) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the negatives in buckets [start, stop), and ``key << 32 | region size`` of the
    positives there; both unsorted."""
    negatives = np.empty(summary.negatives[start:stop].sum(), np.int32)
    positives = np.empty(summary.positives[start:stop].sum(), np.int64)
    lo, hi = (start - 2**15) << 16, ((stop - 2**15) << 16) - 1
    n = m = 0
    for neg_keys, pos_keys, sizes in scan(maps, masks, connectivity):
        found = neg_keys[(neg_keys >= lo) & (neg_keys <= hi)]
        negatives[n : n + found.size] = found
        inside = (pos_keys >= lo) & (pos_keys <= hi)
        packed = pos_keys[inside].astype(np.int64) << 32 | sizes[inside]
        positives[m : m + packed.size] = packed
        n, m = n + found.size, m + packed.size
    return negatives, positives


def tally_bucket(
    maps: Maps, masks: Maps, connectivity: int, bucket: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps of the walk through one bucket, one per key, from histograms of their low 16 bits."""
    neg, pos, weight = np.zeros(2**16, np.int64), np.zeros(2**16, np.int64), np.zeros(2**16)
    for neg_keys, pos_keys, sizes in scan(maps, masks, connectivity):
        neg += np.bincount(neg_keys[bucket_of(neg_keys) == bucket] & 0xFFFF, minlength=2**16)
        inside = bucket_of(pos_keys) == bucket
        low = pos_keys[inside] & 0xFFFF
        pos += np.bincount(low, minlength=2**16)
        weight += np.bincount(low, 1.0 / sizes[inside], minlength=2**16)
    return neg[::-1], pos[::-1], weight[::-1]
