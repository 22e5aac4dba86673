"""bench.report without a browser: leaderboard numbers, the reproduce command, the page's HTML, grids."""
import math
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from matplotlib.contour import ContourSet

from bench import figures
from bench.cli import main
from bench.config import RunConfig, apply_overrides, parse_set
from bench.errors import BenchError
from bench.identity import Selection
from bench.report import write_report
from bench.report.data import Parent, ReportData
from bench.report.leaderboard import gains, label, leaderboard
from bench.report.page import render
from bench.report.reproduce import run_command


def units() -> pd.DataFrame:
    """2 categories × 2 seeds; ard beats none by 10 points except in (b, seed 1); a 0.5 sweep point."""
    rows = []
    for seed, shift in (("0", 0.0), ("1", 0.02)):
        for category, base in (("a", 0.4), ("b", 0.6)):
            ard = base + shift + (-0.02 if (category, seed) == ("b", "1") else 0.1)
            for refiner, value, contamination in (("none", base + shift, 0.0), ("ard", ard, 0.0), ("ard", 0.0, 0.5)):
                rows.append(dict(dataset="synthetic", method="musc", refiner=refiner, category=category, seed=seed,
                                 contamination=contamination, pixel_ap_g2k=value, pixel_auroc_g2k=0.9,
                                 pixel_ap=value, pixel_auroc=0.9,
                                 n_parameters=1e6 if refiner == "ard" else 0.0, train_seconds_per_group=2.0,
                                 refine_ms_per_image=3.0))
    return pd.DataFrame(rows)


def test_leaderboard_rows_in_the_order_the_run_logged_them_none_first():
    frame = pd.concat([units().assign(refiner=name) for name in ("realnet", "none", "ard")])
    assert [r.refiner for r in leaderboard(frame, ["pixel_ap_g2k"])] == ["none", "realnet", "ard"]


def test_leaderboard_mean_std_over_seeds_best_and_gain_with_wins():
    rows = leaderboard(units(), ["pixel_ap_g2k", "pixel_auroc_g2k"])
    assert [(r.method, r.refiner) for r in rows] == [("musc", "none"), ("musc", "ard")]  # none first
    none, ard = rows
    # category means per seed: none 50, 52; ard 60, 56 (the 0.5 contamination units are left out)
    assert none.cells["pixel_ap_g2k"].mean == pytest.approx(51.0)
    assert none.cells["pixel_ap_g2k"].std == pytest.approx(math.sqrt(2))
    assert ard.cells["pixel_ap_g2k"].mean == pytest.approx(58.0)
    assert ard.cells["pixel_ap_g2k"].best and not none.cells["pixel_ap_g2k"].best
    assert none.cells["pixel_auroc_g2k"].best and ard.cells["pixel_auroc_g2k"].best  # a tie: both bold
    gain = ard.cells["pixel_ap_g2k"].gain
    assert gain.gain == pytest.approx(7.0) and (gain.wins, gain.n) == (3, 4)
    assert math.isnan(gain.ci_low) and none.cells["pixel_ap_g2k"].gain is None
    assert ard.costs["n_parameters"] == 1e6 and ard.seeds == 2


def test_one_seed_has_no_std_and_an_undefined_category_leaves_the_mean_undefined():
    frame = units()
    frame = frame[frame.seed == "0"].copy()
    frame.loc[(frame.category == "a") & (frame.refiner == "none"), "pixel_ap_g2k"] = math.nan
    none, ard = leaderboard(frame, ["pixel_ap_g2k"])
    assert math.isnan(ard.cells["pixel_ap_g2k"].std)
    assert math.isnan(none.cells["pixel_ap_g2k"].mean)
    assert gains(frame, "pixel_ap_g2k")[("musc", "ard")].n == 1  # the pair with an undefined value is left out


def test_metric_labels():
    assert [label(m) for m in ("pixel_ap_g2k", "pixel_f1_max", "pixel_aupro_g2k", "image_auroc")] == [
        "pixel AP", "pixel F1-max", "AUPRO", "image AUROC"]


def test_the_reproduce_command_gives_back_the_logged_configuration():
    config = apply_overrides(RunConfig(), {"data_root": "/data/my set", "seed": 3, "pgt.contamination": "0,0.5",
                                           "refiners": "ard,gaussian", "refiner_options": {"ard": {"steps": 2}},
                                           "pgt.n_groups": 2, "categories": "pill,tile", "backbone": "ViT-B-16"})
    resolved = ("dataset_resolved", "dataset_fingerprint", "methods_resolved", "methods_skipped")  # as bench run logs
    params = {**config.to_params(), **dict.fromkeys(resolved, "x")}
    command = run_command(params)
    assert command.startswith("bench run --set seed=3 ") and "'data_root=/data/my set'" in command
    parts = shlex.split(command)[2:]
    rebuilt = apply_overrides(RunConfig(), parse_set(tuple(parts[1::2])))
    assert rebuilt.to_params() == config.to_params()
    assert run_command(RunConfig().to_params()) == "bench run --set seed=0"
    older = {"seed": "1", "backbone": "None", "pgt.contamination": "(0.0, 0.5)", "cache": "True"}  # Python reprs
    assert run_command(older) == "bench run --set seed=1 --set 'pgt.contamination=[0.0, 0.5]'"


class _Page(HTMLParser):
    """Tags with their attributes, and the text of the leaderboard's first column."""

    def __init__(self) -> None:
        super().__init__()
        self.tags, self.bold = [], []
        self._in_bold = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_bold = tag == "b"

    def handle_data(self, data):
        if self._in_bold:
            self.bold.append(data.strip())
            self._in_bold = False


def report_data(frame: pd.DataFrame, logs: bool) -> ReportData:
    """The store's contents for a page: ``frame`` as units, and (``logs``) PGT losses and per-group metrics."""
    unit = dict(method="musc", refiner="ard", category="a")
    losses = pd.DataFrame([{**unit, "group": math.nan, "step": s, "loss": 1 / (s + 1)} for s in range(6)])
    per_group = pd.DataFrame([{**unit, "metric": "pixel_ap", "group": g, "value": 0.1 * g} for g in (1, 2, 3)])
    empty = pd.DataFrame()
    return ReportData(units=frame, parents=[], grids={}, groups=empty, losses=losses if logs else empty,
                      group_metrics=per_group if logs else empty, store="s")


def test_the_page_embeds_everything_and_reads_without_script():
    html = render(report_data(units(), logs=True))
    page = _Page()
    page.feed(html)
    sources = [attrs.get("src") or attrs.get("href") for _, attrs in page.tags if "src" in attrs or "href" in attrs]
    assert sources and all(s.startswith(("data:", "#")) for s in sources), sources  # nothing from elsewhere
    ids = {attrs.get("id") for _, attrs in page.tags}
    assert {"leaderboard-table", "decoders-table", "plot-cost", "plot-contamination", "plot-groups", "plot-loss"} <= ids
    assert "58.0 ± 2.8" in page.bold and "+7.0 · 3/4" in html  # best in bold, gain and wins, in the HTML itself
    bare = render(report_data(units()[units().contamination == 0], logs=False))
    assert "no contamination sweep" in bare and "Per-group metrics are not in this store" in bare
    assert not {"plot-contamination", "plot-groups", "plot-loss"} & set(re.findall(r'id="([\w-]+)"', bare))


def test_the_pgt_plots_say_which_seed_they_show():
    """With two seeds the PGT plots said "first run" without saying which seed that is."""
    data = report_data(units(), logs=True)
    data.parents = [Parent(run_id="r1", name="n", status="FINISHED", params={"seed": "1"}, tags={}),
                    Parent(run_id="r0", name="n", status="FINISHED", params={"seed": "0"}, tags={})]
    html = render(data)
    assert html.count("(first run, seed 1, no contamination)") == 2 and "seed 0," not in html


def test_grid_outlines_the_ground_truth_on_every_map_and_has_a_colour_bar_per_map_column(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(figures.plt, "close", shown.append)  # keep the figure to look at it
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 8:20, 8:20] = True
    maps = torch.rand(2, 16, 16)
    figures.save_grid(tmp_path / "grid.png", np.zeros((2, 32, 32, 3), np.uint8), masks, maps,
                      {"ard": torch.rand(2, 32, 32), "none": torch.rand(2, 32, 32)}, titles=["x", "y"])
    (fig,) = shown
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == 2 * 5 and len(fig.axes) - len(grid) == 3  # coarse, ard, none
    outlined = [any(isinstance(c, ContourSet) for c in ax.collections) for ax in grid]
    assert outlined == [False, False, True, True, True] * 2
    plt.close(fig)
    assert Path(tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize("args, needle", [
    (["--output", "{tmp}"], "is a folder"),
    ([], "no MLflow store there"),
])
def test_bad_input_gives_one_clear_line(args, needle, tmp_path):
    result = CliRunner().invoke(main, ["report", "--out", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and needle in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()  # nothing made


def test_a_report_shows_one_configuration(tmp_path):
    frame = units().assign(parent_id=lambda f: f.seed.map({"0": "run-a", "1": "run-b"}),
                           config=lambda f: f.seed.map({"0": "c1", "1": "c2"}))
    selection = Selection(frame, {"c1": "pgt.n_groups=2", "c2": "pgt.n_groups=4"})
    with pytest.raises(BenchError, match="2 configurations .* runs run-a.* runs run-b"):
        write_report(None, selection, tmp_path / "report.html")  # refused before the store is read
    assert not (tmp_path / "report.html").exists()
