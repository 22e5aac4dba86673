"""What a task does in a worker of a parallel executor (``processes``, ``ray``): one torch thread.

Parallel executors run tasks side by side, one per core; a task with several torch threads would
fight its neighbours for the same cores. Every task is seeded from the run's seed alone
(``bench.resume``), so a task computes here what it computes in a serial run on one torch thread.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

TASK_THREADS = 1  # torch threads (and Ray CPUs) per task


def call_on_task_threads(fn: Callable[[T], R], task: T) -> R:
    """``fn(task)`` with ``TASK_THREADS`` torch threads: the body of a worker's task."""
    import torch

    torch.set_num_threads(TASK_THREADS)
    return fn(task)
