"""scripts/ard_ablation.py end to end on a tiny tree: one bench run per dataset and seed, then the
decoders and gains tables."""
import runpy
import sys
from pathlib import Path

import pytest

from bench.datasets.synthetic import generate
from bench.tracking import open_store

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ard_ablation.py"


def test_runs_land_in_one_store_and_the_tables_count_wins(tmp_path, monkeypatch, capsys):
    root = generate(tmp_path / "syn", seed=1, categories=["tile", "pill"], n_test=12, size=64, progress=False)
    out = tmp_path / "out"
    args = [str(SCRIPT), "--seeds", "3", "--data", f"{root}:tile", "--refiners", "ard_residual,guided",
            "--out", str(out), "--protocol-set", "pgt.n_groups=2", "--protocol-set", "pgt.synth_per_group=4",
            "--protocol-set", "refiner_options.ard_residual.steps=2"]
    monkeypatch.setattr(sys, "argv", args)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    store = open_store(out)
    units = store.units(list(store.parents().run_id))
    assert sorted(units.refiner.unique()) == ["ard_residual", "guided", "none"] and set(units.seed) == {"3"}
    assert set(units.category) == {"tile"}
    text = capsys.readouterr().out
    assert text.count("$ bench run") == 1 and text.count("$ bench table") == 2
    decoders, gains = text.split("$ bench table")[1:]
    assert "--kind decoders" in decoders and "| ard_residual " in decoders and "wins vs none" in decoders
    assert "--kind gains" in gains and "musc Δard_residual" in gains
    assert gains.count("wins vs none") == 4  # one row per pixel metric

    runpy.run_path(str(SCRIPT), run_name="__main__")  # again: the finished run is not repeated
    assert "finished run" in capsys.readouterr().out and len(open_store(out).parents()) == 1


def test_a_failing_bench_command_stops_the_script_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="^Error: .*missing"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
