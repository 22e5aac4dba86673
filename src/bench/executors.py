"""Executors: where the tasks of a ``bench run`` are computed.

An executor calls a picklable function on every task and yields the results as tasks finish; it
knows nothing else about the run. ``serial`` computes the tasks in this process, in order.
``ray`` sends each task to a Ray cluster: the one at ``RunConfig.ray_address``, or a local one
started for the run and shut down after it (a Ray already initialised in this process is used as
it is). Every Ray task gets one CPU and one torch thread (and one GPU with ``--device cuda``);
the cluster's parallelism comes from running tasks side by side. Every task is seeded from the
run's seed alone (``bench.resume``), so the numbers equal a serial run's on one torch thread (more
threads reorder float sums in training: differences of about 1e-4). A task that fails fails the
run (Ray does not retry it: a half-logged retry would duplicate units; ``bench.resume`` redoes it).

Workers log to the run's store themselves, so the store must be one that every node can write:
the default sqlite file serves a cluster on this machine only; a cluster with other nodes needs a
tracking server (``bench server``, then ``--tracking-uri http://HOST:PORT``). Other nodes must also
have ``bench`` installed and see the dataset and ``--out`` at the same paths.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

from bench.errors import BenchError, ConfigError

if TYPE_CHECKING:
    from bench.config import RunConfig

T = TypeVar("T")
R = TypeVar("R")

TASK_THREADS = 1  # torch threads and Ray CPUs per task
CONNECT_TIMEOUT_S = 5.0  # probe of --ray-address before Ray's own (minutes-long) connection retries
LOCAL_STORE_SCHEMES = ("", "file", "sqlite")  # stores that live on this machine's disk
STOP_GRACE_S = 10.0  # how long a local cluster's processes get to exit after ray.shutdown
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def serial(fn: Callable[[T], R], tasks: Sequence[T], config: RunConfig) -> Iterator[R]:
    """Each task in this process, in order."""
    for task in tasks:
        yield fn(task)


def ray_cluster(fn: Callable[[T], R], tasks: Sequence[T], config: RunConfig) -> Iterator[R]:
    """Each task as a Ray task; results in the order tasks finish. A task's exception is re-raised
    as itself (a BenchError stays one), and the tasks still pending are cancelled."""
    import ray

    local = config.ray_address is None
    ours = LocalProcesses() if local else None
    started = False
    pending = []
    try:
        started = connect(config.ray_address)
        require_shared_store(config.tracking_uri, {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]},
                             ray.util.get_node_ip_address())
        gpus = 1 if config.device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=TASK_THREADS, num_gpus=gpus, max_retries=0)(_call)
        shared = ray.put(fn)
        pending = [remote.remote(shared, task) for task in tasks]
        while pending:
            [done], pending = ray.wait(pending)
            try:
                yield ray.get(done)
            except ray.exceptions.RayTaskError as exc:
                raise exc.cause from None
            except ray.exceptions.RayError as exc:  # a worker died (out of memory, killed, node lost)
                raise BenchError(f"--executor ray: a task was lost ({' '.join(str(exc).split())[:300]}); "
                                 "run the same command again to resume the run") from None
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started or (local and ray.is_initialized()):  # also a start that Ctrl-C cut short
            ray.shutdown()
        if ours is not None:
            ours.stop()


def _call(fn: Callable[[T], R], task: T) -> R:
    """The body of a Ray task: ``fn(task)`` with ``TASK_THREADS`` torch threads."""
    import torch

    torch.set_num_threads(TASK_THREADS)
    return fn(task)


def connect(address: str | None) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local one (None); True when this call
    started Ray in this process (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:  # a cluster of ours sends Ray no usage statistics unless RAY_USAGE_STATS_ENABLED=1
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    else:
        probe(address)
    try:  # "local": a new cluster, even when one started by `ray start` runs on this machine
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.ERROR)
    except ConnectionError as exc:
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster there ({exc})") from None
    return True


def probe(address: str) -> None:
    """A ConfigError, at once, when nothing answers at ``address`` (``[ray://]HOST:PORT``; ``auto``
    and ``local`` are Ray's to resolve)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the cluster "
            "(`ray start --head` on its head node) or leave --ray-address out to start a local one"
        ) from None


class LocalProcesses:
    """Makes sure a local Ray cluster leaves no process behind, even when Ctrl-C reaches its processes
    before ``ray.shutdown`` does (the raylet then dies first and its agents, orphaned, live on).

    Linux: this process becomes a child subreaper while the cluster runs, so processes orphaned
    below it are re-parented to it instead of init; ``stop`` gives the processes that appeared
    below it since then a few seconds to exit, kills the rest, and reaps them. Elsewhere: nothing.
    """

    def __init__(self) -> None:
        self.before = descendants()
        self.subreaper = _set_child_subreaper(True)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if not self.subreaper:
            return
        spawned: set[int] = set()
        deadline = time.monotonic() + grace_s
        while (left := descendants() - self.before) and time.monotonic() < deadline:
            spawned |= left
            _reap(spawned)
            time.sleep(0.1)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(spawned | left, block=True)
        _set_child_subreaper(False)


def descendants(root: int | None = None) -> set[int]:
    """Pids of the living processes below ``root`` (default: this process); Linux ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):  # gone meanwhile
            continue
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [os.getpid() if root is None else root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _set_child_subreaper(on: bool) -> bool:
    """``prctl(PR_SET_CHILD_SUBREAPER)`` for this process; False where it is not available."""
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap(pids: set[int], block: bool = False) -> None:
    """Collect the exit status of those of ``pids`` that are children of this process (orphans
    re-parented here) and have ended (``block``: wait for them)."""
    for pid in pids:
        try:
            os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # not our child, or already collected
            pass


def require_shared_store(tracking_uri: str | None, nodes: set[str], here: str) -> None:
    """A ConfigError when the cluster has nodes besides this one but the store is a local file,
    which workers there cannot write."""
    elsewhere = sorted(nodes - {here})
    if elsewhere and urlparse(tracking_uri or "").scheme in LOCAL_STORE_SCHEMES:
        store = f"--tracking-uri {tracking_uri}" if tracking_uri else "the default store <out>/mlflow.db"
        raise ConfigError(
            f"--executor ray: the cluster has nodes other than this machine ({', '.join(elsewhere)}), and their "
            f"workers cannot write {store}; start a tracking server (`bench server --host ADDRESS`) and pass "
            "--tracking-uri http://ADDRESS:PORT"
        )


EXECUTORS: dict[str, Callable[..., Iterator]] = {"serial": serial, "ray": ray_cluster}
