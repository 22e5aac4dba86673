"""No process left behind by a local Ray cluster (Linux: this process as a child subreaper)."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

STOP_GRACE_S = 10.0  # how long a local cluster's processes get to exit after ray.shutdown
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


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
