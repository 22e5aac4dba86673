"""The leaderboard's numbers: each method × refiner's category mean per metric as mean ± std over
seeds, its gain over ``none`` with an interval and a win count, and each refiner's cost.

Values are percent. Units with the lowest contamination of the store are used (a contamination
sweep has its own plot). A metric undefined in one category leaves that category mean undefined.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.gains import BASELINE, MEAN, gain_table
from bench.tables import default_metrics, metric_label, scoped, seed_mean, seed_std

COSTS = {"n_parameters": "parameters", "train_seconds_per_group": "train s/group",
         "refine_ms_per_image": "refine ms/image"}


def label(metric: str) -> str:
    """A metric's name without its scope (the page states the scope once): ``pixel_ap_g2k`` → ``pixel AP``."""
    return metric_label(metric.removesuffix("_g2k"))


def report_metrics(units: pd.DataFrame) -> list[str]:
    """The paper's pixel metrics over groups 2..k (image metrics for a store without masks)."""
    return [m for m in scoped(default_metrics(units), "g2k", units) if m in units]


def clean_units(units: pd.DataFrame) -> pd.DataFrame:
    """The units without pseudo-normal contamination (the lowest ratio in the store)."""
    return units[units.contamination == units.contamination.min()]


@dataclass(frozen=True)
class Gain:
    """A refiner's gain over ``none`` on one metric (percent points)."""

    gain: float  # mean over seeds of the category-mean difference
    ci_low: float  # 95% interval; NaN where the units carry no bootstrap replicates
    ci_high: float
    wins: int  # (category, seed) pairs in which the refiner beats none
    n: int  # (category, seed) pairs compared


def gains(units: pd.DataFrame, metric: str) -> dict[tuple[str, str], Gain]:
    """(method, refiner) → its gain over ``none`` on ``metric``'s category mean, for every refiner
    but ``none``, from ``bench.gains`` (paired-bootstrap interval where the units carry replicates)."""
    table = gain_table(clean_units(units), [metric])
    return {(row.method, row.refiner): Gain(100 * row.gain, 100 * row.ci_low, 100 * row.ci_high, int(row.wins),
                                            int(row.pairs))
            for row in table[table.category == MEAN].itertuples()}


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float  # over seeds; NaN with one seed
    best: bool  # the best mean of its method in this column
    gain: Gain | None


@dataclass(frozen=True)
class Row:
    method: str
    refiner: str
    cells: dict[str, Cell]  # metric -> cell
    costs: dict[str, float]  # COSTS key -> mean over units
    seeds: int


def leaderboard(units: pd.DataFrame, metrics: list[str]) -> list[Row]:
    """One row per method × refiner, in the order the run logged them (``none`` first within a
    method), one cell per metric."""
    clean = clean_units(units)
    per_seed = clean.groupby(["method", "refiner", "seed"])[metrics].agg(seed_mean) * 100
    summary = (per_seed.groupby(level=["method", "refiner"]).agg([seed_mean, seed_std])
               .rename(columns={"seed_mean": "mean", "seed_std": "std"}, level=1))
    best = summary.xs("mean", axis=1, level=1).groupby(level="method").transform("max")
    every_gain = {metric: gains(units, metric) for metric in metrics}
    rows = []
    for (method, refiner), values in summary.iterrows():
        cells = {m: Cell(float(values[(m, "mean")]), float(values[(m, "std")]),
                         bool(values[(m, "mean")] == best.loc[(method, refiner), m]),
                         every_gain[m].get((method, refiner))) for m in metrics}
        unit = clean[(clean.method == method) & (clean.refiner == refiner)]
        costs = {key: float(unit[key].mean()) if key in unit else math.nan for key in COSTS}
        rows.append(Row(method, refiner, cells, costs, int(unit.seed.nunique())))
    methods = {m: i for i, m in enumerate(dict.fromkeys(clean.method))}
    refiners = {r: i for i, r in enumerate(dict.fromkeys(clean.refiner))}  # as logged: the order of --refiners
    return sorted(rows, key=lambda r: (methods[r.method], r.refiner != BASELINE, refiners[r.refiner]))
