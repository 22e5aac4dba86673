"""bench/executors.py: tasks computed in this process, in local worker processes, or on a Ray cluster.
Worker processes and a local Ray cluster give exactly the serial run's numbers (on one torch thread),
and an interrupted run on either resumes with only what is missing."""
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench import config as config_module
from bench.api import Runner
from bench.cli import main
from bench.config import RunConfig, parse_contamination
from bench.datasets.synthetic import generate
from bench.errors import BenchError, ConfigError
from bench.executors import processes, serial
from bench.ray_executor import connect, ray_cluster
from bench.reaping import LocalProcesses, descendants
from bench.resume import ResumeState
from bench.store_policy import require_shared_store
from bench.tracking import open_store
from processes import free_port, left_behind


def test_serial_computes_each_task_in_order_when_asked():
    calls = []
    results = serial(lambda task: calls.append(task) or 10 * task, [3, 1, 2], RunConfig())
    assert next(results) == 30 and calls == [3]  # lazily: the driver's progress bar follows the tasks
    assert list(results) == [10, 20] and calls == [3, 1, 2]


@pytest.mark.parametrize("fields, message", [
    ({"executor": "dask"}, r"invalid executor='dask': must be 'serial' or 'processes' or 'ray'"),
    ({"ray_address": "head:6379"}, r"invalid ray_address='head:6379': must be left out unless executor='ray'"),
    ({"executor": "ray", "device": "cuda:1"}, r"invalid device='cuda:1'.*Ray gives each task its own GPU"),
])
def test_config_checks_the_executor_options(fields, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**fields).validate()


def test_ray_not_installed_says_how_to_install_it(monkeypatch):
    find_spec = config_module.importlib.util.find_spec
    monkeypatch.setattr(config_module.importlib.util, "find_spec", lambda name: None if name == "ray" else find_spec(name))
    with pytest.raises(ConfigError, match=r"pip install 'anorefiner-bench\[ray\]'"):
        RunConfig(executor="ray").validate()
    RunConfig().validate()  # the serial default needs no Ray


def test_a_cluster_beyond_this_machine_needs_a_tracking_server():
    here, other = "10.0.0.1", "10.0.0.2"  # node addresses as Ray reports them; nothing is contacted
    for local in (None, "sqlite:////data/mlflow.db", "file:///data/mlruns", "/data/mlruns"):
        require_shared_store(local, {here}, here)  # one machine: workers share its disk
        with pytest.raises(ConfigError, match=r"nodes other than this machine \(10\.0\.0\.2\).*--tracking-uri http://"):
            require_shared_store(local, {here, other}, here)
    require_shared_store("http://10.0.0.1:5000", {here, other}, here)
    require_shared_store("postgresql://db/mlflow", {other}, here)


def test_an_address_where_nothing_answers_fails_at_once():
    import ray

    port = free_port()
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"--ray-address 127\.0\.0\.1:{port}: nothing answers there"):
        connect(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 30  # not Ray's minutes of connection retries
    assert not ray.is_initialized()


def test_a_runner_travels_as_its_config_resume_state_and_methods(tmp_path):
    runner = Runner(RunConfig(out=tmp_path, seed=7), progress=True, methods=["musc"])
    runner.resume_state = ResumeState("parent", finished={("tile", "musc", 0.0, "none"): "run"})
    runner._streams[(0, "x")] = threading.Lock()  # process state: not picklable, must not travel
    copy = pickle.loads(pickle.dumps(runner))
    assert copy.config == runner.config and copy.resume_state == runner.resume_state
    assert copy._methods == ["musc"]  # the worker binds exactly the parent's methods (none skipped there)
    assert copy._streams == {} and copy.progress is False  # progress bars are the driver's


# ----------------------------------------------------------------------------- local worker processes


def test_processes_yield_results_and_reraise_a_task_error_as_itself():
    """``parse_contamination`` stands for the task function: spawned workers import it by name."""
    results, error = [], None
    try:
        for result in processes(parse_contamination, ["0,0.5", "0.1,oops", "0.2"], RunConfig()):
            results.append(result)
    except ConfigError as exc:
        error = exc
    assert type(error) is ConfigError and str(error).startswith("invalid --contamination '0.1,oops'")
    assert set(results) <= {(0.0, 0.5), (0.2,)}  # whatever finished before the error, unchanged
    assert sorted(processes(parse_contamination, ["0,0.5", "0.2"], RunConfig())) == [(0.0, 0.5), (0.2,)]


def test_processes_a_worker_that_dies_fails_the_run_with_how_to_resume():
    with pytest.raises(BenchError, match=r"--executor processes: a worker process died.*run the same command again"):
        list(processes(os._exit, [1], RunConfig()))  # the worker exits mid-task, as when killed for memory


# ----------------------------------------------------------------------------- a local Ray cluster


def test_ray_yields_results_and_reraises_a_task_error_as_itself():
    """Each item is a task on a local cluster (started and shut down here); ``parse_contamination``
    stands for the task function because Ray workers import it by name."""
    import ray

    results, error = [], None
    try:
        for result in ray_cluster(parse_contamination, ["0,0.5", "0.1,oops", "0.2"], RunConfig(executor="ray")):
            results.append(result)
    except ConfigError as exc:
        error = exc
    assert type(error) is ConfigError and str(error).startswith("invalid --contamination '0.1,oops'")
    assert set(results) <= {(0.0, 0.5), (0.2,)}  # whatever finished before the error, unchanged
    assert not ray.is_initialized()


def test_ray_leaves_the_pending_tasks_to_the_shutdown_not_to_ray_cancel(monkeypatch):
    """A task fails while another still runs: the running one ends with the cluster. ``ray.cancel``
    is never called: its race with a task finishing at that moment aborts the driver before it
    stops its cluster (``ray_cluster``'s docstring)."""
    import ray

    cancelled = []
    monkeypatch.setattr(ray, "cancel", lambda *args, **kwargs: cancelled.append(args))
    with pytest.raises(ValueError, match="non-negative"):  # time.sleep(-1)
        list(ray_cluster(time.sleep, [-1.0, 600.0], RunConfig(executor="ray")))
    assert cancelled == [] and not ray.is_initialized()


TINY = ["--methods", "musc", "--refiners", "ard", "--n-groups", "2", "--contamination", "0,0.25", "--seed", "3",
        "--quiet", "--set", "figures=0", "--set", "pgt.synth_per_group=4", "--set", "refiner_options.ard.steps=3",
        "--set", "refiner_options.ard.stem_channels=32", "--set", "refiner_options.ard.ar_channels=[16,8]",
        "--set", "refiner_options.ard.encoder_channels=[8,8,16]", "--set", "refiner_options.ard.stem_anomaly_channels=8"]
KEY = ["category", "refiner", "contamination"]
COMPARED = ("image_", "pixel_", "n_parameters", "n_true_anomalies")


def finished_units(store):
    return store.client.search_runs([store.experiment_id], "tags.`bench.level` = 'unit' and attributes.status = 'FINISHED'")


def bench(*args: str) -> subprocess.Popen:
    """``bench ARGS`` in its own session, as a terminal job: Ctrl-C goes to all of its processes."""
    return subprocess.Popen([sys.executable, "-m", "bench", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """The tiny dataset and the store of its serial run on one torch thread, the reference of both executors."""
    tmp = tmp_path_factory.mktemp("serial")
    root = generate(tmp / "syn", seed=4, categories=["tile", "pill"], n_test=12, size=64, progress=False)
    reference = CliRunner().invoke(main, ["run", "--data-root", str(root), "--out", str(tmp / "out"), *TINY])
    assert reference.exit_code == 0, reference.output
    return root, tmp / "out"


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_run_interrupted_then_resumed_equals_the_serial_run(executor, serial_run, tmp_path):
    """2 categories × musc × (none, ard) × 2 contaminations: 2 tasks of 4 units each, in worker
    processes or on a local Ray cluster that the run starts and stops. Tasks run on one torch
    thread, so the serial reference runs on one too: with the same seeds and the same thread count
    every number is computed in the same order, so they are compared for exact equality (more
    threads change float reductions in training, by up to 1e-4 here)."""
    root, reference = serial_run
    out = tmp_path / executor
    command = ["run", "--data-root", str(root), "--out", str(out), *TINY, "--executor", executor]
    interrupted = bench(*command)
    deadline = time.monotonic() + 240

    def running() -> bool:
        assert interrupted.poll() is None, interrupted.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no unit finished in time"
        time.sleep(0.05)
        return True

    while not (out / "mlflow.db").is_file() and running():
        pass
    store = open_store(out)  # waits while the run creates the database
    while not finished_units(store) and running():
        pass
    os.killpg(interrupted.pid, signal.SIGINT)  # Ctrl-C
    output = interrupted.communicate(timeout=120)[0]
    assert interrupted.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert left_behind(interrupted.pid) == []  # the workers (the local Ray cluster) went down with the run
    parents = store.parents()
    assert len(parents) == 1 and parents.status.iloc[0] == "KILLED"
    parent = parents.run_id.iloc[0]
    before = {r.info.run_id: r.data.metrics for r in finished_units(store)}
    assert 0 < len(before) < 8, "the run finished before it was interrupted: make it slower"

    resumed = bench(*command)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming run {parent}" in output and f"MLflow run {parent}" in output
    assert left_behind(resumed.pid) == []
    assert store.client.get_run(parent).info.status == "FINISHED"
    units = store.children(parent)
    assert len(units) == 8 and all(r.info.status == "FINISHED" for r in units)
    assert len({tuple(r.data.tags[f"bench.{k}"] for k in KEY) for r in units}) == 8  # none twice
    assert {r.data.params["torch_threads"] for r in units} == {"1"}  # what the numbers depend on, logged
    for run_id, metrics in before.items():  # kept as they were, not recomputed
        assert store.client.get_run(run_id).data.metrics == metrics

    got = store.units(parent).sort_values(KEY).reset_index(drop=True)
    want = open_store(reference).units().sort_values(KEY).reset_index(drop=True)
    columns = [c for c in want.columns if c.startswith(COMPARED)]
    assert len(columns) > 10 and got[KEY].equals(want[KEY])
    assert np.array_equal(got[columns].to_numpy(float), want[columns].to_numpy(float), equal_nan=True)


@pytest.mark.skipif(sys.platform != "linux", reason="child subreaper: Linux only")
def test_local_processes_stop_kills_orphans_left_below_this_process():
    """What Ctrl-C can leave of a local cluster: a process whose parent died first. While a local
    cluster runs, such orphans are re-parented to this process, and ``stop`` ends them."""
    ours = LocalProcesses()
    subprocess.run(["sh", "-c", "sleep 300 & exit 0"], check=True)  # the sleep outlives its shell
    orphans = descendants() - ours.before
    assert len(orphans) == 1  # re-parented here, not to init
    ours.stop(grace_s=0.5)
    assert not descendants() & orphans and not Path(f"/proc/{orphans.pop()}").exists()


def test_the_local_cluster_is_reaped_even_when_its_shutdown_fails(monkeypatch):
    """After a Ctrl-C the raylet may be gone first and ``ray.shutdown`` fail: the reaper must still run
    (a Ray agent was once left behind by the interrupted-run test)."""
    import ray

    import bench.ray_executor as ray_executor

    stopped = []

    class Reaper:
        def stop(self):
            stopped.append(True)

    def broken_shutdown():
        raise RuntimeError("the raylet is gone")

    monkeypatch.setattr(ray_executor, "LocalProcesses", Reaper)
    monkeypatch.setattr(ray_executor, "connect", lambda address: True)  # "started" a cluster
    monkeypatch.setattr(ray, "nodes", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))  # Ctrl-C arrives
    monkeypatch.setattr(ray, "shutdown", broken_shutdown)
    with pytest.raises((KeyboardInterrupt, RuntimeError)):
        list(ray_cluster(lambda task: task, [1], RunConfig(executor="ray")))
    assert stopped == [True]
