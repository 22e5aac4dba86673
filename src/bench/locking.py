"""An exclusive advisory file lock between processes (POSIX ``flock``).

Used where two runs may write one place at once: the MLflow store, the embedded dataset
written on first use.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``); a no-op without a path or fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
