"""Several ``bench run`` processes sharing one sqlite store: nothing is lost, nothing fails."""
import subprocess
import sys

import pytest

from bench import tracking
from bench.datasets.synthetic import generate
from bench.errors import BenchError
from bench.tracking import open_store, retry_locked, with_busy_timeout


def test_locked_database_calls_are_retried_then_reported(monkeypatch):
    monkeypatch.setattr(tracking, "LOCK_BACKOFF_S", (0.001, 0.002))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "logged"

    assert retry_locked(flaky)() == "logged" and len(calls) == 3

    def locked():
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    with pytest.raises(BenchError, match="stayed locked through"):
        retry_locked(locked, "MLflow store x")()

    def other():
        calls.append(1)
        raise ValueError("something else")

    calls.clear()
    with pytest.raises(ValueError):
        retry_locked(other)()
    assert len(calls) == 1  # only lock errors are retried


def test_sqlite_uris_get_a_busy_timeout():
    assert with_busy_timeout("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db?timeout=60"
    assert with_busy_timeout("sqlite:////x/mlflow.db?timeout=5") == "sqlite:////x/mlflow.db?timeout=5"
    assert with_busy_timeout("http://server:5000") == "http://server:5000"


def test_two_runs_write_one_store_at_the_same_time(tmp_path):
    """Two processes start together on a fresh store (first-use schema creation included) with
    different seeds; both finish with their parent and every unit intact."""
    root = generate(tmp_path / "syn", seed=4, categories=["tile", "pill"], n_test=12, size=64, progress=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench", "run", "--data-root", str(root), "--out", str(out), "--refiners", "gaussian",
               "--n-groups", "2", "--quiet"]
    processes = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for seed in (1, 2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output and "locked" not in output
    store = open_store(out)
    parents = store.parents()
    assert len(parents) == 2 and set(parents.status) == {"FINISHED"}
    seeds = set()
    for parent in parents.run_id:
        units = store.children(parent)
        assert len(units) == 4 and all(r.info.status == "FINISHED" for r in units)  # 2 categories x (none, gaussian)
        assert len({(r.data.tags["bench.category"], r.data.tags["bench.refiner"]) for r in units}) == 4
        assert all("pixel_ap" in r.data.metrics for r in units)
        seeds |= {r.data.tags["bench.seed"] for r in units}
        assert store.client.get_run(parent).data.params["seed"] in {"1", "2"}
    assert seeds == {"1", "2"}
