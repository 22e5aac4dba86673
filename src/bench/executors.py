"""Executors: where the tasks of a ``bench run`` are computed.

An executor calls a picklable function on every task and yields the results as tasks finish; it
knows nothing else about the run, and reads three fields of its configuration
(``ExecutorOptions``). ``serial`` computes the tasks in this process, in order; ``ray``
(``bench.ray_executor``) sends each task to a Ray cluster.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

from bench.ray_executor import ray_cluster

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


EXECUTORS: dict[str, Executor] = {"serial": serial, "ray": ray_cluster}
