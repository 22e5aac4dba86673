"""Run identity: seeds of one configuration are averaged, different configurations never are."""
import json
import platform

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.identity import config_id, run_name, select
from bench.tracking import open_store

BASE = {"data_root": "/data/x", "dataset_resolved": "folder", "methods": "musc", "pgt.n_groups": "2", "out": "results"}


def finished_run(store, params: dict, seed: int, ap: float) -> str:
    """A finished parent with units none and ard on categories a and b (ard 10 points better)."""
    params = {**params, "seed": str(seed)}
    parent = store.start_parent(run_name("folder", ["musc"], ["none", "ard"], params), params)
    for refiner, gain in (("none", 0.0), ("ard", 0.1)):
        for category in ("a", "b"):
            unit = {"dataset": "folder", "method": "musc", "refiner": refiner, "contamination": 0.0,
                    "category": category, "seed": seed}
            store.log_unit(parent, unit, {"pixel_ap": ap + gain, "image_auroc": 0.9}, {})
    store.finish(parent)
    return parent


@pytest.fixture(scope="module")
def two_configs(tmp_path_factory):
    """Two configurations (pgt.n_groups 2 and 4) × seeds 0 and 1, and seed 0 of the first run twice."""
    tmp_path = tmp_path_factory.mktemp("store")
    store = open_store(tmp_path)
    other = {**BASE, "pgt.n_groups": "4"}
    runs = [finished_run(store, BASE, 0, 0.40), finished_run(store, BASE, 1, 0.42),
            finished_run(store, other, 0, 0.20), finished_run(store, other, 1, 0.22),
            finished_run(store, BASE, 0, 0.40)]
    return tmp_path, store, runs


def test_config_id_ignores_seed_and_where_results_go_but_not_the_dataset():
    assert config_id({**BASE, "seed": "0"}) == config_id({**BASE, "seed": "1", "out": "elsewhere", "bootstrap": "200",
                                                         "cache": "false", "figures": "0"})
    assert config_id(BASE) != config_id({**BASE, "pgt.n_groups": "4"})
    assert config_id(BASE) != config_id({**BASE, "data_root": "/data/y"})
    name = run_name("mvtec", ["musc"], ["none", "ard"], {**BASE, "seed": "3"})
    assert name.startswith("mvtec musc none+ard seed3 ") and name.endswith(config_id(BASE)[:6])


def test_all_runs_form_one_block_per_configuration_with_seeds_counted_once(two_configs):
    _, store, runs = two_configs
    selection = select(store, "all")
    blocks = selection.blocks()
    assert len(blocks) == 2
    for config, units in blocks:
        assert sorted(units.seed.unique()) == ["0", "1"] and len(units) == 8  # 2 seeds × 2 refiners × 2 categories
        assert "n = 2 seed(s) (0, 1)" in selection.title(config, units)
    assert sorted(selection.labels.values()) == ["pgt.n_groups=2", "pgt.n_groups=4"]
    assert len(selection.notes) == 1 and "seed 0 appears in 2 runs" in selection.notes[0]
    assert runs[0] not in set(selection.units.parent_id)  # the duplicate: the run that finished last counts


def test_table_runs_all_shows_two_blocks_of_two_seeds(two_configs):
    out, _, _ = two_configs
    result = CliRunner().invoke(main, ["table", "--out", str(out), "--runs", "all", "--metric", "pixel_ap"])
    assert result.exit_code == 0, result.output
    assert result.output.count("## configuration") == 2
    assert result.output.count("n = 2 seed(s) (0, 1)") == 2
    assert "(pgt.n_groups=2)" in result.output and "(pgt.n_groups=4)" in result.output
    assert "41.0 ± 1.4" in result.output and "21.0 ± 1.4" in result.output  # never averaged together
    assert "seed 0 appears in 2 runs" in result.output
    latest = CliRunner().invoke(main, ["table", "--out", str(out), "--metric", "pixel_ap"])
    assert "## configuration" not in latest.output and "40.0 " in latest.output


def test_export_is_tidy_csv_and_json_with_provenance(two_configs):
    out, _, _ = two_configs
    result = CliRunner().invoke(main, ["export", "--out", str(out), "--runs", "all", "--output", str(out / "r.csv")])
    assert result.exit_code == 0, result.output
    header, *rows = (out / "r.csv").read_text().splitlines()
    assert header == ("dataset,method,refiner,category,seed,contamination,scope,metric,statistic,value,ci_low,"
                      "ci_high,run_id,config_hash")
    values = [r for r in rows if ",value," in r]
    assert len(values) == 16 * 2  # 16 units (2 configs × 2 seeds × 2 refiners × 2 categories) × 2 metrics
    gains = [r.split(",") for r in rows if ",gain," in r and ",pixel_ap," in r]
    assert len(gains) == 2 * 2 * 3  # configs × seeds × (2 categories + their mean)
    assert all(float(g[9]) == pytest.approx(0.1) for g in gains)
    result = CliRunner().invoke(main, ["export", "--out", str(out), "--runs", "all", "--format", "json"])
    document = json.loads(result.output[result.output.index("{"):])
    assert len(document["configurations"]) == 2 and document["results"][0]["config_hash"] in document["configurations"]
    config = next(iter(document["configurations"].values()))
    assert config["params"]["pgt.n_groups"] in ("2", "4") and len(config["runs"]) == 2
    run = next(iter(config["runs"].values()))
    assert "torch" in run["versions"] and "git_commit" in run and run["cpu"].split()[0] == platform.machine()
    assert isinstance(document["results"][0]["seed"], int)


def test_latex_of_several_configurations_keeps_ascii_titles_as_comments(two_configs):
    out, _, _ = two_configs
    result = CliRunner().invoke(main, ["table", "--out", str(out), "--runs", "all", "--format", "latex",
                                       "--metric", "pixel_ap"])
    text = result.output[result.output.index("%"):]
    assert text.isascii() and text.count("% configuration") == 2 and text.count("\\begin{table}") == 2
