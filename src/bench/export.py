"""Results taken out of the store: one tidy table (CSV, or JSON with the configuration, package
versions and git commit of every run, as lm-evaluation-harness's results file), and what a
``bench run`` leaves on its parent run for the MLflow UI (config.yaml, category means, tables).
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import RunConfig
from bench.gains import MEAN, gain_table
from bench.identity import Selection
from bench.render import render
from bench.tables import IMAGE_METRICS, PIXEL_METRICS, default_metrics, main_table, scoped
from bench.tracking import Store, environment_tags

TIDY_COLUMNS = ["dataset", "method", "refiner", "category", "seed", "contamination", "scope", "metric", "statistic",
                "value", "ci_low", "ci_high", "run_id", "config_hash"]
CONFIG_FILE = "config.yaml"
SCOPE_SUFFIX = {"stream": "", "g2k": "_g2k"}
LEVEL_TAILS = (2.5, 97.5)


def _interval(value: float, replicates: dict | None, key: str) -> tuple[float, float]:
    """A unit metric's 95% bootstrap interval, centred on its exact value (``bench.gains``)."""
    if not isinstance(replicates, dict) or key not in replicates or not math.isfinite(value):
        return math.nan, math.nan
    reps = np.asarray(replicates[key], np.float64)
    if np.isnan(reps[1:]).all():
        return math.nan, math.nan
    low, high = np.nanpercentile(reps[1:] - reps[0], LEVEL_TAILS)
    return value + low, value + high


def tidy(selection: Selection) -> pd.DataFrame:
    """One row per unit, metric and scope (``statistic`` = value), and per gain over ``none``
    (``statistic`` = gain; one per seed, category and their mean), with 95% intervals; fractions."""
    units = selection.units
    rows = []
    for unit in units.itertuples(index=False):
        reps = getattr(unit, "replicates", None)
        for scope, suffix in SCOPE_SUFFIX.items():
            for metric in (*IMAGE_METRICS, *PIXEL_METRICS):
                key = metric + suffix
                if key not in units or (value := getattr(unit, key)) is None or pd.isna(value):
                    continue
                low, high = _interval(float(value), reps, key)
                rows.append([unit.dataset, unit.method, unit.refiner, unit.category, unit.seed, unit.contamination,
                             scope, metric, "value", float(value), low, high, unit.run_id, unit.config])
    for (dataset, seed), part in units.groupby(["dataset", "seed"], sort=False):
        ids = {(u.method, u.refiner, u.category, u.contamination): u.run_id for u in part.itertuples()}
        for scope, suffix in SCOPE_SUFFIX.items():
            keys = [m + suffix for m in (*IMAGE_METRICS, *PIXEL_METRICS) if m + suffix in part]
            for g in gain_table(part, keys).itertuples():
                run_id = ids.get((g.method, g.refiner, g.category, g.contamination), "") if g.category != MEAN else ""
                rows.append([dataset, g.method, g.refiner, g.category, seed, g.contamination, scope,
                             g.metric.removesuffix(suffix), "gain", g.gain, g.ci_low, g.ci_high, run_id, g.config])
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    frame["seed"] = [int(s) if str(s).lstrip("-").isdigit() else s for s in frame.seed]
    return frame


def results_document(store: Store, selection: Selection) -> dict:
    """The tidy rows with each configuration's parameters and each run's commit and package versions."""
    parents = store.parents().set_index("run_id")
    configs = {}
    for config, units in selection.blocks():
        runs = {}
        for parent in dict.fromkeys(units.parent_id):
            run = parents.loc[parent]
            runs[parent] = {"name": run["name"], "seed": run.seed, "status": run.status,
                            "git_commit": run.tags.get("bench.git_commit"), "python": run.tags.get("bench.python"),
                            "cpu": run.tags.get("bench.cpu"),
                            "versions": {k.removeprefix("bench.version."): v for k, v in run.tags.items()
                                         if k.startswith("bench.version.")}}
        configs[config] = {"label": selection.labels.get(config, ""), "params": parents.loc[next(iter(runs))].params,
                           "runs": runs}
    rows = tidy(selection).astype(object)
    rows = rows.where(rows.notna(), None)
    return {"results": rows.to_dict(orient="records"), "configurations": configs, "notes": selection.notes,
            "exported_by": environment_tags()}


def write(frame_or_doc, fmt: str) -> str:
    """CSV text of the tidy frame, or the JSON document (NaN as null)."""
    if fmt == "csv":
        return frame_or_doc.to_csv(index=False, float_format="%.6g")
    return json.dumps(frame_or_doc, indent=2, default=str, allow_nan=False)


def log_config(store: Store, parent_id: str, config: RunConfig, data_root: Path | None) -> None:
    """The resolved configuration as the parent's ``config.yaml``: ``bench run --config`` on it
    computes the same configuration (and hash)."""
    resolved = config
    if data_root is not None and config.data_root is not None:
        resolved = dataclasses.replace(config, data_root=Path(data_root).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_FILE
        path.write_text(resolved.to_yaml())
        store.log_artifact(parent_id, path)


def log_summary(store: Store, parent_id: str) -> None:
    """Category means per method × refiner as the parent's metrics (``mean/musc/ard/pixel_ap_g2k``,
    with ``/c0.2`` for a contamination sweep), and its main tables (md + csv) as artifacts."""
    units = store.units(parent_id, replicates=True)
    metrics = [c for c in units.columns if c.startswith(("image_", "pixel_"))]
    sweep = units.contamination.nunique() > 1
    means = units.groupby(["method", "refiner", "contamination"])[metrics].mean()
    summary = {}
    for (method, refiner, contamination), row in means.iterrows():
        where = f"{method}/{refiner}" + (f"/c{contamination:g}" if sweep else "")
        summary.update({f"mean/{where}/{k}": float(v) for k, v in row.items() if pd.notna(v)})
    store.log_metrics(parent_id, summary)
    names = scoped(default_metrics(units), "g2k", units)
    tables = [main_table(units, m) for m in names if m in units]
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("md", "csv"):
            path = Path(tmp) / f"tables.{fmt}"
            if fmt == "md":
                path.write_text("\n\n".join(render(t, "md") for t in tables) + "\n")
            else:
                path.write_text(pd.concat([t.numbers for t in tables]).to_csv(index=False, float_format="%.6g"))
            store.client.log_artifact(parent_id, str(path), "tables")

