import math

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.tables import contamination_table, decoder_table, main_table, render


def units():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        for category, base in (("a", 0.4), ("b", 0.6)):
            rows.append(dict(method="musc", refiner="none", category=category, contamination=0.0, seed=seed, pixel_ap=base + shift))
            rows.append(dict(method="musc", refiner="ard", category=category, contamination=0.0, seed=seed, pixel_ap=base + 0.1 + shift))
            rows.append(dict(method="musc", refiner="ard", category=category, contamination=0.5, seed=seed, pixel_ap=base + 0.05 + shift))
    return pd.DataFrame(rows)


def test_main_table_has_refiners_side_by_side_and_the_gain():
    table = main_table(units(), "pixel_ap")
    assert list(table.columns) == ["musc none", "musc ard", "musc Δard"]
    assert list(table.index) == ["a", "b", "Mean"]
    assert table.loc["a", "musc none"] == pytest.approx(41.0)  # mean over seeds, percent
    assert table.loc["Mean", "musc ard"] == pytest.approx(61.0)
    assert table["musc Δard"].tolist() == pytest.approx([10.0, 10.0, 10.0])


def test_contamination_table_rows_are_ratios():
    table = contamination_table(units(), ("pixel_ap",))
    assert list(table.index) == [0.0, 0.5]
    assert table.loc[0.5, "musc ard pixel_ap"] == pytest.approx(56.0)
    assert math.isnan(table.loc[0.5, "musc none pixel_ap"])


def test_render_formats():
    table = main_table(units(), "pixel_ap")
    md = render(table, "md")
    assert "| a " in md and "10.0" in md and "pixel_ap (%)" in md
    assert "\\toprule" in render(table, "latex")
    assert render(table, "csv").splitlines()[0] == "pixel_ap (%),musc none,musc ard,musc Δard"
    with pytest.raises(BenchError, match="format"):
        render(table, "html")
    with pytest.raises(BenchError, match="metric 'nope'"):
        main_table(units(), "nope")


def test_decoder_table_mean_std_over_seeds_best_in_bold_and_cost():
    frame = units()
    frame["n_parameters"] = frame.refiner.map({"none": 0.0, "ard": 5e5})
    frame["train_seconds_per_group"] = frame.refiner.map({"none": 0.0, "ard": 12.0})
    frame["refine_ms_per_image"] = 1.0
    table = decoder_table(frame, ["pixel_ap"])
    assert list(table.index) == ["musc / ard", "musc / none"]
    assert table.loc["musc / ard", "pixel_ap"] == "**61.0 ± 1.0**"  # seeds: 60 and 62
    assert table.loc["musc / none", "pixel_ap"] == "51.0 ± 1.0"
    assert table.loc["musc / ard", "params"] == "0.50M" and table.loc["musc / ard", "train s/group"] == "12.0"
    latex = render(table, "latex")
    assert "\\textbf{61.0 $\\pm$ 1.0}" in latex and "pixel\\_ap" in latex


def test_a_metric_undefined_in_one_category_makes_the_mean_undefined():
    frame = units()
    frame.loc[(frame.category == "a") & (frame.refiner == "ard"), "pixel_ap"] = math.nan
    table = main_table(frame, "pixel_ap")
    assert math.isnan(table.loc["Mean", "musc ard"]) and table.loc["Mean", "musc none"] == pytest.approx(51.0)
    assert "undef" in render(table, "md")
