"""Gains over none: paired intervals, their mean over categories, win counts."""
import math

import numpy as np
import pandas as pd
import pytest

from bench.gains import MEAN, gain_table


def unit(refiner, category, seed, value, deviations=None):
    reps = None if deviations is None else {"pixel_ap": np.concatenate([[0.5], 0.5 + np.asarray(deviations, float)])}
    return dict(method="m", refiner=refiner, category=category, contamination=0.0, seed=seed, pixel_ap=value,
                replicates=reps)


def test_a_paired_interval_cancels_what_both_refiners_share():
    shared = np.linspace(-0.2, 0.2, 401)  # a hard resample hurts both refiners alike
    frame = pd.DataFrame([unit("none", "a", 0, 0.4, shared), unit("ard", "a", 0, 0.5, shared + 0.01 * np.sign(shared))])
    row = gain_table(frame, ["pixel_ap"]).set_index("category").loc["a"]
    assert row.gain == pytest.approx(0.1)
    assert row.ci_low == pytest.approx(0.09, abs=1e-3) and row.ci_high == pytest.approx(0.11, abs=1e-3)
    assert row.significant and (row.wins, row.pairs) == (1, 1)


def test_mean_over_categories_averages_each_resample_and_counts_wins_over_seeds():
    spread = np.repeat([-0.04, 0.0, 0.04], [10, 181, 10])  # 2.5 / 97.5 percentiles: ∓0.04
    rows = []
    for seed in (0, 1):
        rows += [unit("none", "a", seed, 0.4, 0 * spread), unit("ard", "a", seed, 0.42 + 0.02 * seed, spread),
                 unit("none", "b", seed, 0.6, 0 * spread), unit("ard", "b", seed, 0.58, spread)]
    table = gain_table(pd.DataFrame(rows), ["pixel_ap"]).set_index("category")
    assert table.loc["a", "gain"] == pytest.approx(0.03) and table.loc["a", "n_seeds"] == 2
    assert (table.loc["a", "ci_low"], table.loc["a", "ci_high"]) == pytest.approx((-0.01, 0.07))
    assert not table.loc["a", "significant"]
    mean = table.loc[MEAN]
    assert mean.gain == pytest.approx(0.005)
    assert (mean.ci_low, mean.ci_high) == pytest.approx((0.005 - 0.04, 0.005 + 0.04))  # same draws in a and b here
    assert (mean.wins, mean.pairs) == (2, 4)  # a wins in both seeds, b in neither


def test_without_replicates_no_interval_and_undefined_values_are_not_counted():
    frame = pd.DataFrame([unit("none", "a", 0, 0.4), unit("ard", "a", 0, 0.5),
                          unit("none", "b", 0, math.nan), unit("ard", "b", 0, 0.5)])
    table = gain_table(frame, ["pixel_ap"]).set_index("category")
    assert math.isnan(table.loc["a", "ci_low"]) and not table.loc["a", "significant"]
    assert math.isnan(table.loc[MEAN, "gain"])  # undefined in one category: undefined mean
    assert (table.loc[MEAN, "wins"], table.loc[MEAN, "pairs"]) == (1, 1)
