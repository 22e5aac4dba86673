"""Processes a command leaves behind, for the tests of commands that start process trees
(``bench server``, ``bench run --executor ray``). Linux ``/proc`` only."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def live_in_session(session: int) -> list[int]:
    """Pids of the processes of ``session`` that are alive (zombies excluded)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _pgrp, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):  # gone meanwhile
            continue
        if state != "Z" and int(sid) == session:
            pids.append(int(stat.parent.name))
    return pids


def left_behind(session: int, grace_s: float = 30.0) -> list[str]:
    """``pid command line`` of the processes of ``session`` still alive after ``grace_s``; they are
    killed, so a failing test leaves none."""
    deadline = time.monotonic() + grace_s
    while (pids := live_in_session(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
        left.append(f"{pid} {command[:200]}")
    return left
