"""Executors: where the tasks of a ``bench run`` are computed.

An executor calls a picklable function on every task and yields the results as tasks finish; it
knows nothing else about the run, and reads three fields of its configuration
(``ExecutorOptions``). ``serial`` computes the tasks in this process, in order; ``processes`` in a
pool of processes on this machine, one task per core; ``ray`` (``bench.ray_executor``) sends each
task to a Ray cluster.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

from bench.errors import BenchError
from bench.ray_executor import ray_cluster
from bench.workers import call_on_task_threads

T = TypeVar("T")
R = TypeVar("R")


class ExecutorOptions(Protocol):
    """The fields of ``RunConfig`` an executor reads."""

    device: str  # "cuda..." gives each Ray task a GPU
    ray_address: str | None  # the Ray cluster; None: a local one for the run
    tracking_uri: str | None  # where workers log; None: the local default store


Executor = Callable[[Callable[[T], R], Sequence[T], ExecutorOptions], Iterator[R]]


def serial(fn: Callable[[T], R], tasks: Sequence[T], options: ExecutorOptions) -> Iterator[R]:
    """Each task in this process, in order."""
    for task in tasks:
        yield fn(task)


def processes(fn: Callable[[T], R], tasks: Sequence[T], options: ExecutorOptions) -> Iterator[R]:
    """Each task in a worker process on this machine, one worker per core (at most one per task),
    one torch thread each (``bench.workers``); results in the order tasks finish.

    On the demo's 2 cores it is 1.09× faster than one process with 2 torch threads, and its
    numbers do not depend on the core count (``benchmarks/test_executor_speed.py``, README
    "Speed levers"). Workers are spawned, not forked (a fork would copy this process's torch
    threads and open store connections), and log to the run's store themselves, as Ray's do. They
    ignore Ctrl-C: this process decides. A failing task fails the run; when the run stops early (a
    failure, Ctrl-C) the running tasks are stopped, not awaited: ``bench.resume`` redoes them.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(len(tasks), cores))
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),  # Ctrl-C is this process's
                               initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    futures = [pool.submit(call_on_task_threads, fn, task) for task in tasks]
    ours = set(multiprocessing.active_children()) - before
    try:
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool as exc:  # a worker died: out of memory, killed
        raise BenchError(f"--executor processes: a worker process died ({exc}); "
                         "run the same command again to resume the run") from None
    except BaseException:  # a task failed, Ctrl-C, or the caller stopped early: stop the running tasks
        for process in ours:
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


EXECUTORS: dict[str, Executor] = {"serial": serial, "processes": processes, "ray": ray_cluster}
