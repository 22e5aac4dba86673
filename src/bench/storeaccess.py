"""Where an MLflow store lives and what can go wrong reaching it (used by ``bench.tracking``).

- ``default_uri``: the sqlite URI of ``<out>/mlflow.db`` with nothing of the path read as URI
  syntax (``%``, ``?``, ``#``); MLflow's stray folder for such a path is removed again;
- ``require_reachable``: a dead http(s) tracking server found in seconds (MLflow retries for minutes);
- ``write_failure``: a store that cannot be written (full disk or database, read-only) as one
  BenchError instead of MLflow's tracebacks;
- ``refuse_database``: a reader's ``--output`` that would overwrite an sqlite database (a store).
"""
from __future__ import annotations

import contextlib
import errno
import socket
import sqlite3
import urllib.parse
import urllib.request
from pathlib import Path

from bench.errors import BenchError


def default_uri(out: Path) -> str:
    """The sqlite store ``<out>/mlflow.db``, its path percent-encoded so that no character of
    ``out`` is read as URI syntax (``%41``, ``?``, ``#`` stay part of the folder name)."""
    path = str((Path(out) / "mlflow.db").resolve())
    return "sqlite:///" + path.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


@contextlib.contextmanager
def no_stray_folder(uri: str):
    """MLflow creates the parent folder of a sqlite URI's path *as written* (percent-encoded):
    an empty stray folder, removed again here when this call made it."""
    written = Path(uri[len("sqlite:///"):].split("?", 1)[0]).parent if uri.startswith("sqlite:///") else None
    stray = written if written is not None and written != sqlite_path(uri).parent and not written.exists() else None
    try:
        yield
    finally:
        if stray is not None:
            with contextlib.suppress(OSError):
                stray.rmdir()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores or in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0])  # as SQLAlchemy reads it
    return Path(path) if path and path != ":memory:" else None


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
WRITE_ERRORS = ("full", "readonly", "disk i/o", "unable to open")  # sqlite's words for a store it cannot write


def write_failure(exc: BaseException, what: str) -> BenchError | None:
    """A BenchError for a store that cannot be written (full disk or database, read-only file,
    I/O error: a sqlite or OS error anywhere in the chain), or None for any other exception."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        storage = isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in WRITE_ERRORS)
        if storage or (isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS):
            reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            return BenchError(f"{what}: cannot write{where}: {reason}; nothing of that call was stored. Free space "
                              "or fix permissions and rerun the same command: the run resumes")
        exc = exc.__cause__ or exc.__context__
    return None


REACH_TIMEOUT_S = 5.0  # an http(s) tracking server must accept a connection within this


def require_reachable(tracking_uri: str) -> None:
    """A BenchError within seconds when an http(s) tracking URI has no server listening (MLflow
    itself retries for minutes before it says so). Behind a proxy the check is left to MLflow."""
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=REACH_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise BenchError(f"--tracking-uri {tracking_uri}: no server answers there ({reason}); start one "
                         "(`bench server`) or check the address") from None


SQLITE_HEADER = b"SQLite format 3\x00"  # the first bytes of every sqlite database file


def refuse_database(output: Path) -> None:
    """A BenchError when ``output`` is an existing sqlite database: ``bench export --output
    results/mlflow.db`` replaced the store it read with a CSV (and ``bench report`` with a page)."""
    try:
        with open(output, "rb") as handle:
            is_database = handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return
    if is_database:
        raise BenchError(f"--output {output}: is an sqlite database (an MLflow store?); refusing to overwrite it, "
                         "give another file name")
