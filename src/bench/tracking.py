"""MLflow logging: one parent run per ``bench run``, one nested run per evaluated unit.

A unit is (dataset, method, refiner, contamination, category). Tables read units back from the
store, so every number shown comes from what was logged.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from bench.errors import BenchError
from bench.locking import file_lock
from bench.storeaccess import (
    default_uri,
    no_stray_folder,
    require_reachable,
    sqlite_path,
    write_failure,
)

REPLICATES = "bootstrap.npz"  # a unit's bootstrap replicates (bench.bootstrap)
UNIT_KEYS = ("dataset", "method", "refiner", "contamination", "category", "seed")
_PACKAGES = ("anorefiner-bench", "torch", "torchvision", "open_clip_torch", "mlflow", "numpy", "scikit-learn")


# Several `bench run` processes may share one sqlite store (same --out). SQLite serialises
# writers: a writer waits up to SQLITE_TIMEOUT_S for the lock (the URI's ``timeout``), and a call
# that still fails with "database is locked" (SQLite gives up at once when two transactions would
# deadlock) is retried with jittered exponential backoff; after LOCK_RETRIES it raises a
# BenchError. Nothing is dropped silently.
SQLITE_TIMEOUT_S = 60
LOCK_RETRIES = 12
LOCK_BACKOFF_S = (0.05, 5.0)  # first delay, largest delay


def with_busy_timeout(uri: str) -> str:
    """A sqlite URI with a ``timeout`` query parameter (seconds a writer waits for the lock)."""
    if not uri.startswith("sqlite:") or "timeout=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_TIMEOUT_S}"


def _is_locked(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if "database is locked" in text or "database table is locked" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_locked(call, what: str = "MLflow store"):
    """``call`` wrapped to retry while sqlite reports "database is locked"; a store that cannot
    be written is one BenchError (``write_failure``), and MLflow's own traceback of it is not logged."""

    @functools.wraps(call)
    def wrapper(*args, **kwargs):
        delay, largest = LOCK_BACKOFF_S
        for attempt in range(LOCK_RETRIES + 1):
            try:
                with _quiet_logger("mlflow.store.db.utils", logging.CRITICAL):
                    return call(*args, **kwargs)
            except Exception as exc:
                if not _is_locked(exc):
                    failure = write_failure(exc, what)
                    if failure is not None:
                        raise failure from None
                    raise
                if attempt == LOCK_RETRIES:
                    raise BenchError(
                        f"{what}: the database stayed locked through {LOCK_RETRIES} retries of "
                        f"{getattr(call, '__name__', 'a call')} (another process holds it); nothing was "
                        "logged by that call. Retry, or use an MLflow server (--tracking-uri http://...) "
                        "for many concurrent runs"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, largest)

    return wrapper


class RetryingClient:
    """An ``MlflowClient`` whose every call retries on sqlite "database is locked"."""

    def __init__(self, client: MlflowClient, what: str) -> None:
        self._client = client
        self._what = what

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        return retry_locked(attr, self._what) if callable(attr) else attr


def environment_tags() -> dict[str, str]:
    """Git commit, package versions and the CPU kernels torch runs, so a run says exactly what produced it.

    ``bench.cpu`` (e.g. ``x86_64 AVX512``): trained refiners at the same seed differ across CPUs whose
    kernels round differently (measured: up to 2.3 points of category-mean pixel AP, AVX2 vs AVX-512).
    """
    import torch

    tags = {"bench.python": platform.python_version(),
            "bench.cpu": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"}
    for package in _PACKAGES:
        try:
            tags[f"bench.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if commit:
            tags["bench.git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


@dataclass
class Store:
    client: MlflowClient
    experiment_id: str
    lock_path: Path | None = None  # sqlite stores: a lock file that serialises multi-step updates

    def lock(self):
        """Exclusive lock across processes sharing this store (a no-op for non-sqlite stores)."""
        return file_lock(self.lock_path)

    def start_parent(self, name: str, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        tags = {"bench.level": "parent", **environment_tags(), **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def log_unit(
        self,
        parent_id: str,
        unit: dict[str, str],
        metrics: dict[str, float],
        params: dict[str, str],
        series: dict[str, list[float] | dict[int, float]] | None = None,
        artifacts: list[Path] = (),
    ) -> str:
        """One nested run holding a unit's metrics, parameters, curves and artifacts."""
        name = "/".join(str(unit[k]) for k in ("method", "refiner", "category"))
        tags = {"mlflow.parentRunId": parent_id, "bench.level": "unit", **{f"bench.{k}": str(v) for k, v in unit.items()}}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self._log(run_id, params={**params, **{k: str(v) for k, v in unit.items()}}, metrics=metrics, series=series)
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id)
        return run_id

    def log_artifact(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        self._log(run_id, metrics=metrics)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def _log(self, run_id: str, params=None, metrics=None, series=None) -> None:
        params = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        points = [Metric(k, float(v), 0, 0) for k, v in (metrics or {}).items() if v is not None]
        for key, values in (series or {}).items():  # a list (steps 0, 1, ...) or {step: value}
            steps = values.items() if isinstance(values, dict) else enumerate(values)
            points += [Metric(key, float(v), 0, step) for step, v in steps if v is not None and not math.isnan(v)]
        for i in range(0, max(len(params), len(points), 1), 100):  # MLflow's batch limits
            self.client.log_batch(run_id, metrics=points[i : i + 100], params=params[i : i + 100])

    def parents(self) -> pd.DataFrame:
        """Every ``bench run`` parent, newest first: run id, name, status, times, seed and parameters."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], "tags.`bench.level` = 'parent'",
                                           order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        columns = ["run_id", "name", "status", "start_time", "end_time", "seed", "params", "tags"]
        return pd.DataFrame([[r.info.run_id, r.info.run_name, r.info.status, r.info.start_time, r.info.end_time,
                              r.data.params.get("seed"), dict(r.data.params), dict(r.data.tags)] for r in runs],
                            columns=columns)

    def replicates(self, run) -> dict | None:
        """A unit run's bootstrap replicates (its ``bootstrap.npz`` artifact), or None if it has none.

        Local artifact stores are read in place; others are downloaded (without a progress bar).
        """
        from bench.bootstrap import load

        uri = run.info.artifact_uri
        if uri.startswith("file:"):
            path = Path(url2pathname(urlparse(uri).path)) / REPLICATES
            return load(path) if path.is_file() else None
        if not any(a.path == REPLICATES for a in self.client.list_artifacts(run.info.run_id)):
            return None
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with tempfile.TemporaryDirectory() as tmp:
            return load(Path(self.client.download_artifacts(run.info.run_id, REPLICATES, tmp)))

    def children(self, parent_id: str) -> list:
        """Every (non-deleted) nested run under ``parent_id``, any status, all pages, in the order they
        started (MLflow's default is the newest first: tables would list refiners backwards)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def units(self, parent_ids: str | list[str] | None = None, replicates: bool = False) -> pd.DataFrame:
        """Unit metrics of ``bench run`` runs, one row per unit, with its ``run_id`` and ``parent_id``
        (and, with ``replicates``, a column of its bootstrap replicates, see ``bench.bootstrap``).

        Default: the latest run, i.e. the one that finished last (a resumed run finishes after it
        started), or, while none has finished, the one that started last.
        """
        if parent_ids is None:
            parents = self.parents()
            if parents.empty:
                raise BenchError("the MLflow store holds no bench run yet: run `bench run` first")
            finished = parents[parents.status == "FINISHED"]
            if not finished.empty:
                parents = finished.sort_values("end_time", ascending=False, kind="stable")
            parent_ids = [parents.run_id.iloc[0]]
        runs = [run for parent_id in ([parent_ids] if isinstance(parent_ids, str) else parent_ids)
                for run in self.children(parent_id)]
        rows = []
        for run in runs:
            row = {k: run.data.tags.get(f"bench.{k}") for k in UNIT_KEYS}
            row.update(run_id=run.info.run_id, parent_id=run.data.tags.get("mlflow.parentRunId"))
            if replicates:
                row["replicates"] = self.replicates(run)
            row.update({k: (math.nan if v is None else v) for k, v in run.data.metrics.items()})
            rows.append(row)
        frame = pd.DataFrame(rows)
        if frame.empty:
            ids = [parent_ids] if isinstance(parent_ids, str) else list(parent_ids)
            raise BenchError(
                f"no results logged under run(s) {', '.join(ids) or '(none given)'}: the run ids are unknown "
                "here, or the run stopped before its first unit finished; see `bench table --runs all` "
                "or the run ids in `bench ui`"
            )
        frame["contamination"] = frame["contamination"].astype(float)
        return frame


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.WARNING):
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


def _require_out(out: Path, create: bool, tracking_uri: str | None) -> None:
    """Writers need a writable ``out``; readers (``create=False``) need its store and create nothing."""
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
            # a probe of this process's own (a shared name raced: two runs starting on one store at once,
            # one deleted the other's probe and the second was told it could not write)
            with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise BenchError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None
    elif tracking_uri is None and not (out / "mlflow.db").is_file():
        raise BenchError(f"--out {out}: no MLflow store there ({out / 'mlflow.db'} not found); pass the results "
                         "folder of a `bench run` (its --out), or --tracking-uri")


def open_store(out: Path, tracking_uri: str | None = None, experiment: str = "bench", create: bool = True) -> Store:
    """The MLflow store (default: sqlite ``<out>/mlflow.db``).

    ``create`` (``bench run``): ``out`` is made and must be writable, and the experiment is
    created if needed. Readers pass ``create=False``: nothing is written (a read-only store is
    fine), and a missing store or experiment is an error naming it.
    """
    out = Path(out)
    if not isinstance(experiment, str) or not experiment.strip():
        raise BenchError(f"--experiment {experiment!r}: the experiment name is empty; give one (default: bench)")
    _require_out(out, create, tracking_uri)
    uri = with_busy_timeout(tracking_uri or default_uri(out))
    require_reachable(uri)
    database = sqlite_path(uri)
    lock_path = database.with_name(database.name + ".lock") if database is not None and create else None
    what = f"--tracking-uri {tracking_uri}" if tracking_uri else f"MLflow store {out / 'mlflow.db'}"
    # One process at a time creates the tables and the experiment: MLflow's first-use schema
    # migration and create_experiment race when two runs open a fresh store together. MLflow's
    # INFO lines about creating the tables are kept off the console.
    with file_lock(lock_path), no_stray_folder(uri), _quiet_logger("mlflow.store.db.utils"), _quiet_logger("alembic"):
        try:
            client = RetryingClient(MlflowClient(uri), what)
            found = client.get_experiment_by_name(experiment)
            if found is None and not create:
                raise BenchError(f"{what}: no experiment {experiment!r} there; see --experiment")
            if found is None:
                local = None if tracking_uri else (out / "artifacts").resolve().as_uri()
                experiment_id = client.create_experiment(experiment, artifact_location=local)
            else:
                experiment_id = found.experiment_id
        except BenchError:
            raise
        except Exception as exc:  # bad URI scheme, unreachable server, corrupt database, ...
            reason = " ".join(str(exc).split())[:400]
            hint = ("give a sqlite:///path.db or http(s):// tracking URI, or leave --tracking-uri out to use <out>/mlflow.db"
                    if tracking_uri else "if the file is damaged or from an incompatible MLflow, move it away and rerun")
            raise BenchError(f"{what}: cannot open the MLflow store ({type(exc).__name__}: {reason}); {hint}") from None
    return Store(client, experiment_id, lock_path)
