"""Gains over the baseline refiner with paired-bootstrap confidence intervals and win counts.

``gain_table(units, metrics)`` is the one source of every gain shown anywhere (tables, exports,
reports). For each configuration, method, refiner, contamination and metric it gives, per
category and for the unweighted mean over categories (category ``MEAN``):

- ``gain``: the mean over seeds of ``metric(refiner) - metric(none)``, from the exact metrics;
- ``ci_low``, ``ci_high``: a 95% interval from the paired bootstrap of ``bench.bootstrap``. Each
  unit's replicates are deviations from its own full-set (binned) value; the gain's deviation in
  a resample is the refiner's minus ``none``'s on the *same* resampled images, averaged over
  seeds (and, for the mean, over categories: each category resampled within itself). The
  interval is the exact gain plus the 2.5 and 97.5 percentiles of that deviation, so the
  histograms' small binning error does not shift it. It covers the uncertainty of the test
  images; the spread over seeds is shown separately (mean ± std);
- ``significant``: the interval excludes 0;
- ``wins`` / ``pairs``: in how many (category, seed) pairs the refiner beats ``none``, out of
  the pairs where both are defined.

Values are fractions, as logged; tables show them in points (× 100).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

BASELINE = "none"
MEAN = "Mean"
LEVEL = 0.95
GAIN_COLUMNS = ["config", "method", "refiner", "contamination", "metric", "category", "gain", "ci_low", "ci_high",
                "significant", "wins", "pairs", "n_seeds"]


def _deviations(row: pd.Series, metric: str) -> np.ndarray | None:
    """A unit's bootstrap deviations from its full-set value (None without replicates)."""
    reps = row.get("replicates") if "replicates" in row else None
    if not isinstance(reps, dict) or metric not in reps:
        return None
    values = np.asarray(reps[metric], np.float64)
    return values[1:] - values[0]


def _paired(own: pd.Series, base: pd.Series, metric: str) -> np.ndarray | None:
    """The gain's deviation in each resample: refiner minus baseline on the same images."""
    a, b = _deviations(own, metric), _deviations(base, metric)
    if a is None or b is None:
        return None
    n = min(len(a), len(b))
    return a[:n] - b[:n]


def _mean(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    """Element-wise mean of replicate arrays (cut to the shortest); None if any is missing."""
    if not arrays or any(a is None for a in arrays):
        return None
    n = min(len(a) for a in arrays)
    return np.mean([a[:n] for a in arrays], axis=0)


def _interval(gain: float, deviation: np.ndarray | None) -> tuple[float, float]:
    if deviation is None or not np.isfinite(gain) or np.isnan(deviation).all():
        return np.nan, np.nan
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.nanpercentile(deviation, [tail, 100 - tail])
    return gain + low, gain + high


def gain_table(units: pd.DataFrame, metrics: list[str], baseline: str = BASELINE) -> pd.DataFrame:
    """Gains of every refiner over ``baseline`` with intervals and win counts (columns ``GAIN_COLUMNS``).

    ``units``: ``Store.units`` rows (``replicates`` column optional: without it the intervals are
    NaN); a ``config`` column groups runs of one configuration (all one configuration if absent).
    """
    units = units if "config" in units else units.assign(config="")
    rows = []
    keys = ["config", "method", "contamination"]
    for (config, method, contamination), block in units.groupby(keys, sort=False, dropna=False):
        base = block[block.refiner == baseline].set_index(["category", "seed"])
        if base.empty:
            continue
        for refiner, own in block[block.refiner != baseline].groupby("refiner", sort=False):
            own = own.set_index(["category", "seed"])
            pairs = own.index.intersection(base.index)
            for metric in metrics:
                if metric not in own:
                    continue
                per_category = []
                for category in dict.fromkeys(pairs.get_level_values(0)):
                    seeds = [p for p in pairs if p[0] == category]
                    diff = np.array([own.loc[p, metric] - base.loc[p, metric] for p in seeds], dtype=float)
                    deviation = _mean([_paired(own.loc[p], base.loc[p], metric) for p in seeds])
                    per_category.append((category, diff, deviation))
                for category, diff, deviation in per_category:
                    rows.append(_row(config, method, refiner, contamination, metric, category, diff, deviation))
                if per_category:
                    diffs = np.concatenate([d for _, d, _ in per_category])
                    gain = float(np.mean([d.mean() for _, d, _ in per_category]))
                    deviation = _mean([dev for _, _, dev in per_category])
                    rows.append(_row(config, method, refiner, contamination, metric, MEAN, diffs, deviation,
                                     gain=gain, n_seeds=max(len(d) for _, d, _ in per_category)))
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def _row(config, method, refiner, contamination, metric, category, diff: np.ndarray, deviation, gain=None,
         n_seeds=None) -> dict:
    gain = float(diff.mean()) if gain is None else gain
    low, high = _interval(gain, deviation)
    defined = diff[np.isfinite(diff)]
    return dict(config=config, method=method, refiner=refiner, contamination=contamination, metric=metric,
                category=category, gain=gain, ci_low=low, ci_high=high,
                significant=bool(np.isfinite(low) and (low > 0 or high < 0)),
                wins=int((defined > 0).sum()), pairs=int(defined.size), n_seeds=n_seeds or len(diff))
