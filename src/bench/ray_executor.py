"""The ``ray`` executor: each task of a ``bench run`` on a Ray cluster.

``ray_cluster`` sends each task to a Ray cluster: the one at ``RunConfig.ray_address``, or a local one
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
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from bench.errors import BenchError, ConfigError
from bench.reaping import LocalProcesses
from bench.store_policy import require_shared_store
from bench.workers import TASK_THREADS, call_on_task_threads

if TYPE_CHECKING:
    from bench.executors import ExecutorOptions

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 5.0  # probe of --ray-address before Ray's own (minutes-long) connection retries


def ray_cluster(fn: Callable[[T], R], tasks: Sequence[T], options: ExecutorOptions) -> Iterator[R]:
    """Each task as a Ray task; results in the order tasks finish. A task's exception is re-raised
    as itself (a BenchError stays one). Tasks still pending when the loop ends (an error, Ctrl-C)
    end with the job at ``ray.shutdown``: Ray kills the workers of a job whose driver has left.
    They are not ``ray.cancel``-ed first: a cancel that races the reply of a task finishing at that
    moment fails a check in Ray's core worker (2.60: "Tried to complete task that was not pending";
    the race of ray-project/ray#54798, fixed there for retries only), which aborts this process
    before it can stop its local cluster (seen as a test's leftover ``ray::DashboardAgent``)."""
    import ray

    local = options.ray_address is None
    ours = LocalProcesses() if local else None
    started = False
    try:
        started = connect(options.ray_address)
        require_shared_store(options.tracking_uri, {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]},
                             ray.util.get_node_ip_address())
        gpus = 1 if options.device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=TASK_THREADS, num_gpus=gpus, max_retries=0)(call_on_task_threads)
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
        try:
            if started or (local and ray.is_initialized()):  # also a start that Ctrl-C cut short
                ray.shutdown()
        finally:  # even when the shutdown fails (its raylet already gone after a Ctrl-C)
            if ours is not None:
                ours.stop()


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
