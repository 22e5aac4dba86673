import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError
from bench.render import render
from bench.tables import contamination_table, decoder_table, default_metrics, main_table, metric_label


def units(seeds=(0, 1)):
    rows = []
    for seed in seeds:
        shift = 0.02 * seed
        for category, base in (("a", 0.4), ("b", 0.6)):
            rows.append(dict(method="musc", refiner="none", category=category, contamination=0.0, seed=seed, pixel_ap=base + shift))
            rows.append(dict(method="musc", refiner="ard", category=category, contamination=0.0, seed=seed, pixel_ap=base + 0.1 + shift))
            rows.append(dict(method="musc", refiner="ard", category=category, contamination=0.5, seed=seed, pixel_ap=base + 0.05 + shift))
    return pd.DataFrame(rows)


def with_replicates(frame, spread=0.01):
    """Replicates whose deviations are ±spread for none and 0 for ard: the gain's interval is gain ∓ spread."""
    frame = frame.copy()
    deviation = np.repeat([-spread, 0.0, spread], [10, 181, 10])  # 2.5 and 97.5 percentiles: ∓spread
    frame["replicates"] = [{"pixel_ap": np.concatenate([[v], v + (deviation if r == "none" else 0 * deviation)])}
                           for v, r in zip(frame.pixel_ap, frame.refiner)]
    return frame


def cells(table):
    return {row[0]: dict(zip([" ".join(p for p in c if p) for c in table.columns][1:], row[1:])) for row in table.rows}


def test_main_table_means_over_seeds_gain_interval_and_wins():
    table = main_table(with_replicates(units()), "pixel_ap")
    grid = cells(table)
    assert list(grid) == ["a", "b", "Mean", "wins vs none"]
    assert grid["a"]["musc none"] == "41.0 ± 1.4"  # seeds 40 and 42: mean ± sample std
    assert grid["Mean"]["musc ard"] == "61.0 ± 1.4"
    assert grid["a"]["musc Δard"] == "+10.0* [+9.0, +11.0]"  # interval excludes 0: marked
    assert grid["wins vs none"]["musc Δard"] == "4/4"
    numbers = table.numbers.set_index(["refiner", "category"])
    assert numbers.loc[("ard", "Mean"), "ci_low"] == pytest.approx(9.0)
    assert numbers.loc[("ard", "Mean"), "wins"] == 4 and numbers.loc[("ard", "a"), "pairs"] == 2


def test_one_seed_has_no_plus_minus_and_no_interval_without_replicates():
    grid = cells(main_table(units(seeds=(0,)), "pixel_ap"))
    assert grid["a"]["musc none"] == "40.0"
    assert grid["a"]["musc Δard"] == "+10.0"  # no replicates logged: no interval, not marked


def test_the_gains_table_counts_each_categorys_seeds_won():
    """Issue 15 asks for per-category win counts: with several seeds each gain says how many it wins."""
    frame = with_replicates(units())
    frame.loc[(frame.category == "b") & (frame.seed == 1) & (frame.refiner == "ard"), "pixel_ap"] = 0.0
    table = main_table(frame, "pixel_ap", values=False)
    grid = cells(table)
    assert grid["a"]["musc Δard"].endswith("] 2/2") and grid["b"]["musc Δard"].endswith(" 1/2")
    assert grid["wins vs none"]["musc Δard"] == "3/4" and "the seeds it wins" in table.notes[0]
    one_seed = cells(main_table(with_replicates(units(seeds=(0,))), "pixel_ap", values=False))
    assert one_seed["a"]["musc Δard"].endswith("]")  # one seed: the interval says it all


@pytest.mark.parametrize("seeds, over", [((1,), "seed 1"), ((0, 1), "mean over 2 seeds")])
def test_captions_say_which_seeds_the_values_are_over(seeds, over):
    """A one-seed table was headed "mean over seeds"."""
    frame = units(seeds=seeds).query("contamination == 0")
    assert f"(%); {over}; gains over none" in main_table(frame, "pixel_ap").caption
    assert f"gains over none, {over}, with" in main_table(frame, "pixel_ap", values=False).caption
    assert f"category mean, {over} (%)" in decoder_table(frame, ["pixel_ap"]).caption


def test_best_value_per_method_is_bold():
    table = main_table(units(), "pixel_ap")
    ard = [c for c, (_, name) in enumerate(table.columns) if name == "ard"][0]
    assert {(0, ard), (1, ard), (2, ard)} <= table.bold
    assert "**51.0 ± 1.4**" in render(table, "md")


def test_contamination_table_rows_are_ratios():
    table = contamination_table(units(), ("pixel_ap",))
    assert [row[0] for row in table.rows] == ["0", "0.5"]
    numbers = table.numbers.set_index(["refiner", "contamination"])
    assert numbers.loc[("ard", 0.5), "value"] == pytest.approx(56.0)
    assert math.isnan(numbers.loc[("none", 0.5), "value"])
    assert "undef" in render(table, "md")


def test_decoder_table_mean_std_gain_interval_best_wins_and_cost():
    frame = with_replicates(units())
    frame["n_parameters"] = frame.refiner.map({"none": 0.0, "ard": 5e5})
    frame["train_seconds_per_group"] = frame.refiner.map({"none": 0.0, "ard": 12.0})
    frame["refine_ms_per_image"] = 1.0
    table = decoder_table(frame, ["pixel_ap"])
    rows = {row[1]: row for row in table.rows}
    assert [row[1] for row in table.rows] == ["none", "ard"]
    assert rows["ard"][2] == "61.0 ± 1.4 (+10.0* [+9.0, +11.0])" and rows["none"][2] == "51.0 ± 1.4"
    assert (1, 2) in table.bold and (0, 2) not in table.bold
    assert rows["ard"][3] == "AP 4/4" and rows["ard"][4] == "0.50M" and rows["ard"][5] == "12.0"
    csv = render(table, "csv")
    assert "±" not in csv and "**" not in csv
    assert pd.read_csv(__import__("io").StringIO(csv)).set_index("refiner").loc["ard", "pixel_ap_wins"] == 4


def test_an_undefined_metric_in_one_category_makes_the_mean_undefined():
    frame = units()
    frame.loc[(frame.category == "a") & (frame.refiner == "ard"), "pixel_ap"] = math.nan
    grid = cells(main_table(frame, "pixel_ap"))
    assert grid["Mean"]["musc ard"] == "undef" and grid["Mean"]["musc none"] == "51.0 ± 1.4"


def test_metric_names_read_well_and_only_scores_are_percent():
    assert metric_label("pixel_ap_g2k") == "pixel AP (groups 2..k)"
    assert metric_label("pixel_aupro") == "AUPRO" and metric_label("image_f1_max") == "image F1-max"
    frame = units().assign(n_parameters=1e5)
    table = main_table(frame, "n_parameters")
    assert "(%)" not in table.caption and "n parameters" in table.caption
    with pytest.raises(BenchError, match="metric 'nope' is not in the store"):
        main_table(units(), "nope")
    with pytest.raises(BenchError, match="format"):
        render(table, "html")


def test_default_metrics_follow_what_the_store_holds():
    assert default_metrics(units())[0] == "pixel_auroc"
    assert default_metrics(pd.DataFrame({"image_auroc": [0.5]})) == ("image_auroc", "image_ap", "image_f1_max")


def test_csv_holds_numbers_only():
    numbers = main_table(with_replicates(units()), "pixel_ap").numbers
    text = [c for c in ("value", "std", "gain", "ci_low", "ci_high", "wins", "pairs")]
    assert all(pd.api.types.is_numeric_dtype(numbers[c]) for c in text)


def latex_document(body: str) -> str:
    return "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body + "\n\\end{document}\n"


def test_main_table_of_a_run_without_a_clean_block_names_its_contamination():
    """Found in the fifth round: `bench run --contamination 0.5` printed the main table of its
    contaminated units under the caption of a clean run."""
    assert "contamination" not in main_table(units(), "pixel_ap").caption
    dirty = units().query("contamination == 0.5 or refiner == 'none'").assign(contamination=0.5)
    assert "pixel AP (%); pseudo-normal contamination 0.5; mean over 2 seeds" in main_table(dirty, "pixel_ap").caption


def test_latex_keeps_category_names_without_an_ascii_form_apart():
    """Found in the fifth round: characters without an ASCII form were dropped, so the categories
    ``tile_日本`` and ``tile_中国`` were two rows named ``tile_``."""
    frame = units()
    frame.loc[frame.category == "a", "category"] = "tïle_日本"
    frame.loc[frame.category != "tïle_日本", "category"] = "tïle_中国"
    text = render(main_table(frame, "pixel_ap"), "latex")
    assert text.isascii() and "tile\\_[U+65E5][U+672C] &" in text and "tile\\_[U+4E2D][U+56FD] &" in text


def test_latex_is_ascii_booktabs_with_caption_label_groups_and_signed_gains(tmp_path):
    frame = with_replicates(units())
    frame.loc[frame.category == "a", "category"] = "déjà_vu & 100%"
    text = render(main_table(frame, "pixel_ap"), "latex")
    assert text.isascii()
    for needle in ("\\begin{table}", "\\caption{pixel AP", "\\label{tab:pixel-ap}", "\\toprule", "\\bottomrule",
                   "\\multicolumn{3}{c}{musc}", "$\\Delta$ard", "+10.0* [+9.0, +11.0]", "\\textbf{61.0 $\\pm$ 1.4}",
                   "deja\\_vu \\& 100\\%"):
        assert needle in text, needle
    lines = text.splitlines()
    assert lines[lines.index(next(line for line in lines if line.startswith("Mean"))) - 1] == "\\midrule"
    for env in ("table", "tabular"):
        assert text.count(f"\\begin{{{env}}}") == text.count(f"\\end{{{env}}}") == 1
    assert len(re.findall(r"(?<!\\)\$", text)) % 2 == 0
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: checked ASCII and balanced environments only")
    decoders = units().assign(n_parameters=0.0, train_seconds_per_group=0.0, refine_ms_per_image=1.0)
    body = text + "\n" + render(decoder_table(decoders, ["pixel_ap"]), "latex") + "\n" + render(
        contamination_table(units(), ("pixel_ap",)), "latex")
    (tmp_path / "t.tex").write_text(latex_document(body))
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]


def test_gains_table_keeps_only_the_gains_of_the_main_table():
    frame = with_replicates(units())
    full, gains = cells(main_table(frame, "pixel_ap")), cells(main_table(frame, "pixel_ap", values=False))
    assert list(gains["a"]) == ["musc Δard"] and gains["a"]["musc Δard"] == full["a"]["musc Δard"] + " 2/2"
    assert gains["wins vs none"] == {"musc Δard": "4/4"} and not main_table(frame, "pixel_ap", values=False).bold


def test_the_cli_offers_every_kind_of_table():
    from bench.cli import main
    from bench.tables import KINDS

    kind = next(p for p in main.commands["table"].params if p.name == "kind")
    assert tuple(kind.type.choices) == KINDS
