"""``bench server``: an MLflow tracking server on 127.0.0.1 that a ``bench run`` logs to, stopped
with its whole process group. Traffic goes to 127.0.0.1 only."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.datasets.synthetic import generate
from bench.errors import BenchError
from bench.server import require_free_port, server_uri
from bench.tracking import open_store
from processes import free_port, left_behind

STARTED = re.compile(r"MLflow tracking server at (http://\S+) \(pid (\d+),")


def test_a_port_in_use_is_refused_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BenchError, match=f"--port {port}: cannot listen there.*choose another --port"):
            require_free_port("127.0.0.1", port)
    require_free_port("127.0.0.1", port)  # free again


def test_uri_reaches_the_server_from_this_machine():
    assert server_uri("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert server_uri("0.0.0.0", 5001) == "http://127.0.0.1:5001"  # bound everywhere: reached on loopback
    assert server_uri("::1", 5002) == "http://[::1]:5002"


def wait_for_start(process: subprocess.Popen, log, timeout_s: float = 240.0) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = STARTED.search(log.read_text())
        if found:
            return found[1], int(found[2])
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"bench server did not start in {timeout_s} s:\n{log.read_text()[-3000:]}")


def test_a_run_logs_through_the_server_which_stops_with_its_group(tmp_path):
    root = generate(tmp_path / "syn", seed=2, categories=["tile"], n_test=12, size=48, progress=False)
    port = free_port()
    served = tmp_path / "served"
    log = tmp_path / "server.log"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with log.open("w") as handle:
        server = subprocess.Popen(
            [sys.executable, "-m", "bench", "server", "--port", str(port), "--out", str(served), "--workers", "1"],
            stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    mlflow_pid = None
    try:
        uri, mlflow_pid = wait_for_start(server, log)
        assert uri == f"http://127.0.0.1:{port}"

        args = ["run", "--data-root", str(root), "--out", str(tmp_path / "client"), "--tracking-uri", uri,
                "--methods", "musc", "--refiners", "gaussian", "--n-groups", "2", "--quiet"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output

        through_server = open_store(tmp_path / "client", uri)
        parents = through_server.parents()
        assert len(parents) == 1 and parents.status.iloc[0] == "FINISHED"
        units = through_server.children(parents.run_id.iloc[0])
        assert sorted(r.data.tags["bench.refiner"] for r in units) == ["gaussian", "none"]
        assert all(r.info.status == "FINISHED" and "pixel_ap" in r.data.metrics for r in units)
        # the server holds the runs in its own store and the artifacts it was sent under <out>/artifacts
        assert not (tmp_path / "client" / "mlflow.db").exists()
        assert len(open_store(served).parents()) == 1
        assert len(list((served / "artifacts").rglob("tile_groups.csv"))) == 2

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        leftovers = left_behind(mlflow_pid) if mlflow_pid else []
    assert leftovers == [], f"processes of the MLflow server left running: {leftovers}"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nobody answers any more
