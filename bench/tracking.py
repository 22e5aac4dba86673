"""MLflow logging: one parent run per ``bench run``, one nested run per evaluated unit.

A unit is (dataset, method, refiner, contamination, category). Tables read units back from the
store, so every number shown comes from what was logged.
"""
from __future__ import annotations

import math
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from bench.errors import BenchError

UNIT_KEYS = ("dataset", "method", "refiner", "contamination", "category", "seed")
_PACKAGES = ("anorefiner-bench", "torch", "torchvision", "open_clip_torch", "mlflow", "numpy", "scikit-learn")


def default_uri(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


def environment_tags() -> dict[str, str]:
    """Git commit and package versions, so a run says exactly what produced it."""
    tags = {"bench.python": platform.python_version()}
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

    def start_parent(self, name: str, params: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"bench.level": "parent", **environment_tags()})
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def log_unit(
        self,
        parent_id: str,
        unit: dict[str, str],
        metrics: dict[str, float],
        params: dict[str, str],
        series: dict[str, list[float]] | None = None,
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
        for key, values in (series or {}).items():
            points += [Metric(key, float(v), 0, step) for step, v in enumerate(values)]
        for i in range(0, max(len(params), len(points), 1), 100):  # MLflow's batch limits
            self.client.log_batch(run_id, metrics=points[i : i + 100], params=params[i : i + 100])

    def parents(self) -> pd.DataFrame:
        runs = self.client.search_runs([self.experiment_id], "tags.`bench.level` = 'parent'", order_by=["attributes.start_time DESC"])
        return pd.DataFrame([{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status} for r in runs])

    def units(self, parent_ids: str | list[str] | None = None) -> pd.DataFrame:
        """Unit metrics of ``bench run`` runs (default: the latest), one row per unit."""
        if parent_ids is None:
            parents = self.parents()
            if parents.empty:
                raise BenchError("the MLflow store holds no bench run yet: run `bench run` first")
            parent_ids = [parents.run_id.iloc[0]]
        runs = []
        for parent_id in [parent_ids] if isinstance(parent_ids, str) else parent_ids:
            token = None
            while True:
                page = self.client.search_runs(
                    [self.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000, page_token=token
                )
                runs += list(page)
                token = page.token
                if not token:
                    break
        rows = []
        for run in runs:
            row = {k: run.data.tags.get(f"bench.{k}") for k in UNIT_KEYS}
            row.update({k: (math.nan if v is None else v) for k, v in run.data.metrics.items()})
            rows.append(row)
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["contamination"] = frame["contamination"].astype(float)
        return frame


def open_store(out: Path, tracking_uri: str | None = None, experiment: str = "bench") -> Store:
    """The MLflow store (default: sqlite under ``out``), creating the experiment if needed."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None
    client = MlflowClient(tracking_uri or default_uri(out))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        local = None if tracking_uri else (out / "artifacts").resolve().as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=local)
    else:
        experiment_id = found.experiment_id
    return Store(client, experiment_id)
