"""End to end through the click CLI on a tiny synthetic tree: run → MLflow → table; eval; data; list."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.data import open_dataset
from bench.datasets.synthetic import generate
from bench.tracking import open_store


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "syn", seed=1, categories=["tile", "pill"], n_test=12, size=64, progress=False)


@pytest.fixture(scope="module")
def finished_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    args = ["run", "--data-root", str(tiny_root), "--out", str(out), "--refiners", "ard,gaussian", "--n-groups", "2",
            "--seed", "3", "--quiet", "--set", "pgt.synth_per_group=4", "--set", "refiner_options.ard.steps=2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_run_logs_every_unit_and_prints_the_table_from_the_store(finished_run):
    out, output = finished_run
    units = open_store(out).units()
    assert sorted(units.refiner.unique()) == ["ard", "gaussian", "none"]
    assert sorted(units.category.unique()) == ["pill", "tile"] and len(units) == 6
    assert set(units.seed) == {"3"}
    for metric in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro", "image_auroc", "pixel_ap_g2k"):
        assert units[metric].between(0, 1).all(), metric
    # image scores are the ZSAD scores for every refiner
    assert units.groupby("category").image_auroc.nunique().eq(1).all()
    assert "pixel AP (groups 2..k) (%)" in output and "musc Δard" in output
    ard = units[(units.refiner == "ard") & (units.category == "tile")].iloc[0]
    none = units[(units.refiner == "none") & (units.category == "tile")].iloc[0]
    assert ard.train_seconds_total > 0 and none.train_seconds_total == 0 and ard.n_parameters > 0


def test_parent_run_holds_config_versions_and_stage_timings(finished_run):
    out, _ = finished_run
    store = open_store(out)
    parent = store.client.get_run(store.parents().run_id.iloc[0])
    assert parent.data.params["seed"] == "3" and parent.data.params["pgt.n_groups"] == "2"
    assert parent.data.params["refiner_options.ard.steps"] == "2"
    assert "bench.version.torch" in parent.data.tags
    assert {"time_features_s", "time_scoring_s", "time_pgt_s", "time_metrics_s"} <= set(parent.data.metrics)
    unit = store.client.search_runs([store.experiment_id], "tags.`bench.refiner` = 'ard' and tags.`bench.category` = 'pill'")[0]
    names = {a.path for a in store.client.list_artifacts(unit.info.run_id)}
    assert {"pill_groups.csv", "pill_grid.png"} <= names
    assert len(store.client.get_metric_history(unit.info.run_id, "loss")) == 2  # steps=2, one trained group
    assert [m.step for m in store.client.get_metric_history(unit.info.run_id, "group_pixel_ap")] == [1, 2]
    assert "bootstrap.npz" in names


def test_parent_run_is_named_and_holds_config_means_and_tables(finished_run):
    out, _ = finished_run
    store = open_store(out)
    parent = store.client.get_run(store.parents().run_id.iloc[0])
    assert parent.info.run_name.startswith("synthetic musc none+ard+gaussian seed3 ")
    assert parent.data.metrics["mean/musc/ard/pixel_ap_g2k"] == pytest.approx(
        open_store(out).units().query("refiner == 'ard'").pixel_ap_g2k.mean())
    artifacts = {a.path for a in store.client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "tables"} <= artifacts
    tables = {a.path for a in store.client.list_artifacts(parent.info.run_id, "tables")}
    assert tables == {"tables/tables.md", "tables/tables.csv"}


def test_table_kinds_and_formats(finished_run):
    out, _ = finished_run
    runner = CliRunner()
    for args in (["--kind", "main"], ["--kind", "decoders"], ["--kind", "contamination"], ["--format", "latex"],
                 ["--format", "csv", "--scope", "stream"]):
        result = runner.invoke(main, ["table", "--out", str(out), *args])
        assert result.exit_code == 0, (args, result.output)
    result = runner.invoke(main, ["table", "--out", str(out), "--metric", "pixel_ap", "--format", "csv"])
    header, *rows = result.output.splitlines()
    assert header == "metric,method,refiner,category,value,std,n_seeds,gain,ci_low,ci_high,significant,wins,pairs,config"
    assert len(rows) == 3 * 3  # refiners × (2 categories + mean), one table
    result = runner.invoke(main, ["table", "--out", str(out), "--kind", "decoders", "--format", "csv"])
    assert "**" not in result.output and "±" not in result.output


def test_config_yaml_of_the_store_reruns_the_same_config_to_the_same_numbers(finished_run, tmp_path):
    out, _ = finished_run
    store = open_store(out)
    parent = store.parents().iloc[0]
    config = store.client.download_artifacts(parent.run_id, "config.yaml", str(tmp_path))
    result = CliRunner().invoke(main, ["run", "--config", config, "--out", str(tmp_path / "again"), "--quiet"])
    assert result.exit_code == 0, result.output
    again = open_store(tmp_path / "again").parents().iloc[0]
    assert again.tags["bench.config_hash"] == parent.tags["bench.config_hash"]
    tmp_path = tmp_path / "again"
    key = ["category", "refiner"]
    first = open_store(out).units().sort_values(key).reset_index(drop=True)
    second = open_store(tmp_path).units().sort_values(key).reset_index(drop=True)
    cols = ["pixel_ap", "pixel_aupro", "image_auroc", "pixel_ap_g2k"]
    assert np.array_equal(first[cols].to_numpy(), second[cols].to_numpy())


def test_eval_scores_maps_made_elsewhere(tiny_root, tmp_path):
    dataset = open_dataset(tiny_root)
    for sample in dataset.test("tile"):
        target = tmp_path / "tile" / "test" / sample.defect / f"{sample.path.stem}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, sample.mask.astype(np.float32))  # a perfect map
    result = CliRunner().invoke(main, ["eval", "--maps", str(tmp_path), "--data-root", str(tiny_root), "--categories", "tile", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["tile"]["pixel_auroc"] == pytest.approx(1.0) and metrics["mean"]["image_auroc"] == pytest.approx(1.0)


def test_a_folder_without_masks_runs_end_to_end_with_image_metric_tables(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "textile"
    shutil.copytree(tiny_root / "tile", root / "tile", ignore=shutil.ignore_patterns("ground_truth"))
    args = ["run", "--data-root", str(root), "--out", str(tmp_path / "out"), "--methods", "musc", "--refiners", "gaussian",
            "--n-groups", "2", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "image AUROC (groups 2..k) (%)" in result.output and "pixel" not in result.output.split("MLflow run")[1]
    result = CliRunner().invoke(main, ["table", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0 and "image AP (groups 2..k)" in result.output, result.output


@pytest.mark.parametrize("args,needle", [
    (["run", "--methods", "muscc"], "Did you mean 'musc'"),
    (["run", "--refiners", "ardd"], "Did you mean 'ard'"),
    (["run", "--data-root", "/nonexistent/tree"], "/nonexistent/tree"),
    (["run", "--contamination", "0,2"], "pgt.contamination"),
    (["run", "--set", "pgt.n_groups=0"], "pgt.n_groups"),
    (["eval", "--maps", "/nonexistent/maps", "--data-root", "TREE"], "/nonexistent/maps"),
    (["table", "--out", "EMPTY"], "no MLflow store there"),
])
def test_bad_input_gives_one_clear_line(args, needle, tiny_root, tmp_path):
    args = [str(tiny_root) if a == "TREE" else str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    if args[0] == "run":
        args += ["--out", str(tmp_path / "out"), "--data-root", str(tiny_root)] if "--data-root" not in args else ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert needle in result.output and "Traceback" not in result.output


def test_data_check_and_list(tiny_root):
    runner = CliRunner()
    result = runner.invoke(main, ["data", "check", str(tiny_root)])
    assert result.exit_code == 0 and "pill" in result.output and "tile" in result.output
    result = runner.invoke(main, ["list"])
    for name in ("musc", "ard", "none", "efficientnet_lite0", "mvtec", "visa"):
        assert name in result.output
