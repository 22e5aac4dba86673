"""`bench ui` serves the MLflow UI on 127.0.0.1 like `bench server`: one Error line when it cannot
(port taken, no store), and nothing left running once it is stopped."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner

from bench.cli import main
from bench.tracking import open_store
from processes import free_port, left_behind

STARTED = re.compile(r"MLflow UI at (http://\S+)/#/experiments/(\d+) \(pid (\d+),")


def one_error(args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_a_folder_without_a_store_is_refused_and_left_untouched(tmp_path):
    line = one_error(["ui", "--out", tmp_path / "typo"])
    assert "no MLflow store there" in line and str(tmp_path / "typo") in line
    assert not (tmp_path / "typo").exists()
    assert "a tracking server serves its own UI" in one_error(["ui", "--tracking-uri", "http://127.0.0.1:1"])


def test_a_port_in_use_is_one_error(tmp_path):
    open_store(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"--port {port}: cannot listen there" in one_error(["ui", "--out", tmp_path, "--port", port])
    assert "no experiment 'other'" in one_error(["ui", "--out", tmp_path, "--experiment", "other"])


def test_ui_serves_the_store_and_leaves_no_worker_when_stopped(tmp_path):
    open_store(tmp_path)
    port = free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--out", str(tmp_path), "--port", str(port)],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (found := STARTED.search(log.read_text())) and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert found, log.read_text()[-3000:]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        assert opener.open(f"{found[1]}/", timeout=10).status == 200
        server = int(found[3])
        process.send_signal(signal.SIGTERM)  # to `bench ui` alone, as `kill PID` does
        assert process.wait(timeout=60) == 0
        assert left_behind(server) == [], "MLflow processes outlived `bench ui`"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        left_behind(process.pid, grace_s=0)
