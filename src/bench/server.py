"""``bench server``: an MLflow tracking server for runs whose workers log from other processes or
machines (``bench run --executor ray --tracking-uri http://HOST:PORT``).

``mlflow server`` starts worker processes that outlive a plain kill of its main process, and
background job workers unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` (docs/design.md, "Executors and tracking"):
it runs here with job execution off, in its own process group, and is stopped as a group.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.errors import BenchError

READY_TIMEOUT_S = 180.0  # MLflow takes about 16 s to answer on 2 idle cores; more under load
STOP_TIMEOUT_S = 20.0  # after SIGTERM, the group gets SIGKILL
POLL_S = 0.5


def client_host(host: str) -> str:
    """The address that reaches a server bound to ``host`` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def server_uri(host: str, port: int) -> str:
    host = client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def require_free_port(host: str, port: int) -> None:
    """A BenchError naming the option when ``host:port`` cannot be bound (in use, or not an address here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BenchError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
                             "choose another --port") from None


def answers(uri: str) -> bool:
    """Whether the MLflow server at ``uri`` answers its health check (no proxy, 2 s timeout)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start(backend_store_uri: str, artifacts_destination: str, host: str = "127.0.0.1", port: int = 5000,
          workers: int = 4) -> subprocess.Popen:
    """Start ``mlflow server`` in its own process group and return once it answers."""
    require_free_port(host, port)
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
               "--workers", str(workers), "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", artifacts_destination]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(command, env=env, start_new_session=True)
    uri = server_uri(host, port)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while not answers(uri):
            if process.poll() is not None:
                raise BenchError(f"mlflow server exited with code {process.returncode} before answering "
                                 "(its output is above); check --backend-store-uri and --artifacts-destination")
            if time.monotonic() > deadline:
                raise BenchError(f"mlflow server did not answer at {uri} within {READY_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
    except BaseException:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left of it after ``STOP_TIMEOUT_S``."""
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # the group is empty
            break
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def serve(process: subprocess.Popen) -> int:
    """Wait until Ctrl-C or SIGTERM (then stop the server and return 0) or until the server exits by
    itself (return its exit code); either way no process of its group is left."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(process)
        signal.signal(signal.SIGTERM, previous)


def start_ui(out: Path, tracking_uri: str | None, experiment: str, host: str, port: int,
             echo: Callable[[str], object] = print) -> int:
    """``bench ui``: the MLflow UI for an existing store, served like ``bench server`` (one error
    when the port is taken, no worker left when stopped); returns its exit code."""
    from bench.tracking import default_uri, open_store

    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        raise BenchError(f"--tracking-uri {tracking_uri}: a tracking server serves its own UI; open that address "
                         "in a browser")
    store = open_store(out, tracking_uri, experiment, create=False)  # says so when there is no store
    uri = tracking_uri or default_uri(out)
    process = start(uri, str((Path(out) / "artifacts").resolve()), host, port, workers=1)
    echo(f"MLflow UI at {server_uri(host, port)}/#/experiments/{store.experiment_id} (pid {process.pid}, "
         f"store {uri}). Ctrl-C stops it.")
    return serve(process)
