"""Resuming an interrupted run: the identity hash, what is kept and deleted, and a real ``kill -9``."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.datasets.synthetic import generate
from bench.resume import HASH_TAG, PID_TAG, config_hash, start_or_resume
from bench.tracking import open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the fast tests (a fresh one costs seconds); each test has its own config."""
    return open_store(tmp_path_factory.mktemp("store"), experiment="resume")


def params(name):
    return {"seed": "0", "data_root": f"/data/{name}", "dataset_resolved": "synthetic", "out": "results"}


def log_unit(store, parent, category, refiner, finished=True):
    unit = {"dataset": "synthetic", "method": "musc", "refiner": refiner, "contamination": 0.0, "category": category, "seed": 0}
    if finished:
        return store.log_unit(parent, unit, {"pixel_ap": 0.5}, {})
    tags = {"mlflow.parentRunId": parent, "bench.level": "unit", **{f"bench.{k}": str(v) for k, v in unit.items()}}
    return store.client.create_run(store.experiment_id, tags=tags).info.run_id  # killed inside log_unit


def test_config_hash_is_the_computation_not_the_output_place():
    a = params("x")
    assert config_hash(a) == config_hash({**a, "out": "/elsewhere", "tracking_uri": "sqlite:///x.db", "resume": "False"})
    # options that change no number: a --no-cache rerun after a crash resumes
    assert config_hash(a) == config_hash({**a, "cache": "False", "figures": "0"})
    assert config_hash(a) != config_hash({**a, "pgt.synth.threshold": "0.4"})
    assert config_hash(a) != config_hash({**a, "seed": "1"})
    assert config_hash(a) != config_hash(params("y"))
    assert config_hash(dict(reversed(list(a.items())))) == config_hash(a)


def test_resume_keeps_finished_units_and_deletes_partial_ones(store):
    first = start_or_resume(store, "run", params("resume"))
    assert not first.resumed
    parent = store.client.get_run(first.parent_id)
    assert parent.data.tags[HASH_TAG] == config_hash(params("resume")) and parent.data.tags[PID_TAG] == str(os.getpid())
    kept = {
        ("tile", "none"): log_unit(store, first.parent_id, "tile", "none"),
        ("tile", "ard"): log_unit(store, first.parent_id, "tile", "ard"),
        ("pill", "none"): log_unit(store, first.parent_id, "pill", "none"),
    }
    partial = log_unit(store, first.parent_id, "pill", "ard", finished=False)
    store.finish(first.parent_id, "KILLED")

    second = start_or_resume(store, "run", params("resume"))
    assert second.resumed and second.parent_id == first.parent_id
    assert store.client.get_run(first.parent_id).info.status == "RUNNING"
    assert second.block_done("tile", "musc", 0.0, ["none", "ard"])
    assert second.method_done("tile", "musc", (0.0,), ["none", "ard"])
    assert not second.block_done("pill", "musc", 0.0, ["none", "ard"])  # redone...
    assert second.unit_done("pill", "musc", "0.0", "none")  # ...but its finished unit is not logged again
    assert not second.block_done("tile", "musc", 0.1, ["none", "ard"])  # another contamination: not done
    remaining = {r.info.run_id for r in store.children(first.parent_id)}
    assert remaining == set(kept.values()) and partial not in remaining
    assert store.client.get_run(partial).info.lifecycle_stage == "deleted"


def test_finished_parent_or_no_resume_starts_a_new_run(store):
    first = start_or_resume(store, "run", params("finished"))
    store.finish(first.parent_id)
    second = start_or_resume(store, "run", params("finished"))
    assert not second.resumed and second.parent_id != first.parent_id
    store.finish(second.parent_id, "FAILED")
    third = start_or_resume(store, "run", params("finished"), resume=False)
    assert not third.resumed and third.parent_id not in (first.parent_id, second.parent_id)


def test_a_run_whose_process_is_alive_is_not_resumed(store, capsys):
    first = start_or_resume(store, "run", params("alive"))  # RUNNING, owned by this (live) process
    second = start_or_resume(store, "run", params("alive"))
    assert not second.resumed and second.parent_id != first.parent_id
    assert "still running" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a real kill -9

ARGS = ["--refiners", "gaussian", "--n-groups", "2", "--seed", "5", "--quiet"]
COMPARED = ("image_", "pixel_", "n_parameters", "n_true_anomalies")


def finished_units(out):
    if not (out / "mlflow.db").is_file():
        return []
    store = open_store(out)
    return store.client.search_runs([store.experiment_id], "tags.`bench.level` = 'unit' and attributes.status = 'FINISHED'")


def test_kill_minus_9_then_rerun_resumes_without_recomputing(tmp_path):
    root = generate(tmp_path / "syn", seed=3, categories=["tile", "pill", "nut"], n_test=12, size=64, progress=False)
    out = tmp_path / "out"
    command = ["run", "--data-root", str(root), "--out", str(out), *ARGS]
    process = subprocess.Popen([sys.executable, "-m", "bench", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while not finished_units(out):
            assert process.poll() is None, process.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()  # reaped: its pid is no longer alive
    before = {r.info.run_id: r for r in finished_units(out)}
    store = open_store(out)
    parents = store.parents()
    assert len(parents) == 1 and parents.status.iloc[0] == "RUNNING"  # kill -9: nobody marked it
    parent = parents.run_id.iloc[0]
    assert 0 < len(before) < 6, "the run finished before it was killed: make it slower"

    resumed = CliRunner().invoke(main, command)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming run {parent}" in resumed.output and f"MLflow run {parent}" in resumed.output
    assert len(store.parents()) == 1 and store.client.get_run(parent).info.status == "FINISHED"
    units = store.children(parent)
    assert len(units) == 6 and all(r.info.status == "FINISHED" for r in units)
    keys = [(r.data.tags["bench.category"], r.data.tags["bench.refiner"]) for r in units]
    assert len(set(keys)) == 6  # no duplicates
    ids = {r.info.run_id for r in units}
    assert set(before) <= ids  # the units finished before the kill were kept, not recomputed
    for run_id, run in before.items():
        assert store.client.get_run(run_id).data.metrics == run.data.metrics

    reference_out = tmp_path / "reference"
    reference = CliRunner().invoke(main, ["run", "--data-root", str(root), "--out", str(reference_out), *ARGS])
    assert reference.exit_code == 0, reference.output
    key = ["category", "refiner"]
    got = store.units(parent).sort_values(key).reset_index(drop=True)
    want = open_store(reference_out).units().sort_values(key).reset_index(drop=True)
    columns = [c for c in want.columns if c.startswith(COMPARED)]
    assert len(columns) > 10 and got[key].equals(want[key])
    assert np.array_equal(got[columns].to_numpy(float), want[columns].to_numpy(float), equal_nan=True)
