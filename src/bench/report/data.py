"""What a report shows, read once from the MLflow store: unit metrics, parent runs, artifacts, losses.

Every number on the page comes from here, so the page shows what was logged and nothing else.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.bootstrap import GROUP_PREFIX
from bench.tracking import Store

LOSS_KEY = re.compile(r"loss(?:_group(\d+))?$")  # "loss" over all rounds, or (older runs) one per round
UNIT = ("method", "refiner", "category")


@dataclass
class Parent:
    """One ``bench run`` in the report: its id, name, configuration and environment."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    artifacts: dict[str, str] = field(default_factory=dict)  # text artifacts of the parent (config.yaml)


@dataclass
class ReportData:
    units: pd.DataFrame  # one row per unit (see Store.units)
    parents: list[Parent]
    grids: dict[tuple[str, str], bytes]  # (method, category) -> the figure grid PNG of the first run
    groups: pd.DataFrame  # the <category>_groups.csv rows of the first run, with method and category
    losses: pd.DataFrame  # method, refiner, category, group (NaN: not logged), step, loss (first run)
    group_metrics: pd.DataFrame  # method, refiner, category, metric, group, value (first run)
    store: str = ""  # where the store is, for the page's header


def gather(store: Store, units: pd.DataFrame, where: str = "") -> ReportData:
    """The report's contents: ``units`` (``Store.units`` rows of one configuration), their parent runs
    and, from the first parent, the grids, PGT logs and losses.

    Artifacts are the same for every refiner of a (category, method, contamination) block, so each
    is read once, from the block with the lowest contamination.
    """
    parent_ids = list(dict.fromkeys(units.parent_id))
    parents = [_parent(store, run_id) for run_id in parent_ids]
    children = [run for run in store.children(parent_ids[0]) if run.info.status == "FINISHED"]
    clean = min((float(r.data.tags.get("bench.contamination", 0)) for r in children), default=0.0)
    blocks: dict[tuple[str, str], str] = {}
    loss_rows, group_rows = [], []
    for run in children:
        tags = run.data.tags
        if float(tags.get("bench.contamination", 0)) != clean:
            continue
        unit = {"method": tags["bench.method"], "refiner": tags["bench.refiner"], "category": tags["bench.category"]}
        blocks.setdefault((unit["method"], unit["category"]), run.info.run_id)
        for key in sorted(run.data.metrics):
            match = LOSS_KEY.match(key)
            if not match and not key.startswith(GROUP_PREFIX):
                continue
            for point in store.client.get_metric_history(run.info.run_id, key):
                if match:
                    group = int(match.group(1)) if match.group(1) else math.nan
                    loss_rows.append({**unit, "group": group, "step": point.step, "loss": point.value})
                else:
                    group_rows.append({**unit, "metric": key.removeprefix(GROUP_PREFIX), "group": point.step,
                                       "value": point.value})
    grids, groups = {}, []
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        for (method, category), run_id in sorted(blocks.items()):
            names = {a.path for a in store.client.list_artifacts(run_id)}
            if f"{category}_grid.png" in names:
                grids[(method, category)] = _download(store, run_id, f"{category}_grid.png", tmp).read_bytes()
            if f"{category}_groups.csv" in names:
                text = _download(store, run_id, f"{category}_groups.csv", tmp).read_text()
                groups.append(pd.read_csv(io.StringIO(text)).assign(method=method, category=category))
    return ReportData(units=units, parents=parents, grids=grids,
                      groups=pd.concat(groups, ignore_index=True) if groups else pd.DataFrame(),
                      losses=pd.DataFrame(loss_rows, columns=[*UNIT, "group", "step", "loss"]),
                      group_metrics=pd.DataFrame(group_rows, columns=[*UNIT, "metric", "group", "value"]),
                      store=where)


def _parent(store: Store, run_id: str) -> Parent:
    run = store.client.get_run(run_id)
    texts = {}
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        for artifact in store.client.list_artifacts(run_id):
            if not artifact.is_dir and artifact.path.endswith((".yaml", ".yml")):
                texts[artifact.path] = _download(store, run_id, artifact.path, tmp).read_text()
    return Parent(run_id, run.info.run_name or run_id, run.info.status, dict(run.data.params), dict(run.data.tags),
                  texts)


def _download(store: Store, run_id: str, path: str, folder: str) -> Path:
    target = Path(folder) / run_id
    target.mkdir(exist_ok=True)
    return Path(store.client.download_artifacts(run_id, path, str(target)))


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow progress bar per downloaded artifact (the report's own output is one line)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before
