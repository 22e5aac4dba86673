"""The report as one HTML page: the Jinja template filled from ``ReportData``, everything embedded."""
from __future__ import annotations

import io
import math
from datetime import datetime, timezone

import jinja2
import pandas as pd
from PIL import Image

from bench.report import plots
from bench.report.data import Parent, ReportData
from bench.report.leaderboard import COSTS, Cell, Gain, label, leaderboard, report_metrics
from bench.report.reproduce import run_command

GRID_WIDTH = 1000  # figure grids are downscaled to at most this many pixels across
VERSION_TAG = "bench.version."


def render(data: ReportData) -> str:
    """The page's HTML for what ``data`` holds."""
    units = data.units
    metrics = report_metrics(units)
    rows = leaderboard(units, metrics)
    cost_metric = next((m for m in metrics if m.startswith("pixel_ap")), metrics[0])
    sweep = units.contamination.nunique() > 1
    figures = {
        "cost": plots.cost_plot(rows, cost_metric),
        "contamination": plots.contamination_plot(units, metrics) if sweep else None,
        "loss": plots.loss_plot(data.losses) if not data.losses.empty else None,
        "group_metric": plots.group_plot(data.group_metrics) if not data.group_metrics.empty else None,
    }
    runs = [{"run_id": p.run_id, "name": p.name, "status": p.status, "params": p.params, "tags": p.tags,
             "artifacts": p.artifacts, "command": run_command(p.params),
             "versions": sorted((k.removeprefix(VERSION_TAG), v) for k, v in p.tags.items() if k.startswith(VERSION_TAG))}
            for p in data.parents]
    context = {
        "title": " · ".join(", ".join(sorted(units[key].unique())) for key in ("dataset", "method", "refiner")),
        "store": data.store, "made": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seeds": sorted(units.seed.unique(), key=_number), "runs": runs, "sweep": sweep,
        "first_run": _first_run(data.parents),
        "scope": "groups 2..k (the images a trained refiner refined)" if metrics[0].endswith("_g2k") else "whole test stream",
        "metrics": [(m, label(m)) for m in metrics], "rows": rows, "intervals": _has_intervals(rows),
        "cost_metric": cost_metric, "cost_metric_name": label(cost_metric),
        "cost_keys": list(COSTS), "cost_names": list(COSTS.values()),
        "plots": figures, "groups": _group_table(data.groups),
        "grids": [{"method": m, "category": c, "uri": _thumbnail(png)} for (m, c), png in sorted(data.grids.items())],
    }
    return _environment().get_template("page.html.j2").render(context)


def _first_run(parents: list[Parent]) -> str:
    """Which run the page's PGT plots and grids come from: ``first run, seed 1``."""
    seed = parents[0].params.get("seed") if parents else None
    return "first run" if seed is None else f"first run, seed {seed}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.report", ""), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(value=_value, gain=_gain, gainclass=_gain_class, sortkey=_sort_key, cost=_cost)
    return env


def _value(cell: Cell) -> str:
    """``66.3 ± 2.9`` (just the mean with one seed), ``undef`` for an undefined metric."""
    if math.isnan(cell.mean):
        return "undef"
    return f"{cell.mean:.1f}" if math.isnan(cell.std) else f"{cell.mean:.1f} ± {cell.std:.1f}"


def _gain(gain: Gain) -> str:
    """``+30.3 [+25.1, +35.0] · 6/6`` (without the interval where there is none)."""
    interval = "" if math.isnan(gain.ci_low) else f" [{gain.ci_low:+.1f}, {gain.ci_high:+.1f}]"
    return f"{gain.gain:+.1f}{interval} · {gain.wins}/{gain.n}"


def _gain_class(gain: Gain) -> str:
    """``up`` / ``down`` when the gain's interval excludes 0 (no colour without an interval)."""
    return "up" if gain.ci_low > 0 else "down" if gain.ci_high < 0 else ""


def _sort_key(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _cost(value: float, key: str) -> str:
    if math.isnan(value):
        return "-"
    if key == "n_parameters":
        return f"{value / 1e6:.2f}M" if value else "0"
    return f"{value:.1f}"


def _has_intervals(rows) -> bool:
    return any(cell.gain is not None and not math.isnan(cell.gain.ci_low) for row in rows for cell in row.cells.values())


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _group_table(groups: pd.DataFrame) -> dict | None:
    """The PGT log per method and group, summed over categories (seconds to one decimal; a refiner's
    columns only where it spent time)."""
    if groups.empty:
        return None
    summed = groups.drop(columns="category").groupby(["method", "group"], sort=True).sum().reset_index()
    summed = summed.loc[:, ~summed.columns.str.contains("_seconds_") | summed.any()]  # none's 0 s: left out
    names = {"n_images": "images", "n_pseudo_normals": "pseudo-normals",
             "n_true_anomalies_in_pseudo": "true anomalies in them", "synth_seconds": "synthesis s"}
    columns = [names.get(c, c.replace("_seconds_", " s ")) for c in summed.columns]
    rows = [[f"{v:.1f}" if isinstance(v, float) else v for v in values] for values in summed.itertuples(index=False)]
    return {"columns": columns, "rows": rows}


def _thumbnail(png: bytes) -> str:
    """A figure grid as a PNG data URI, at most ``GRID_WIDTH`` pixels across."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > GRID_WIDTH:
        image = image.resize((GRID_WIDTH, round(image.height * GRID_WIDTH / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return plots.data_uri(buffer.getvalue(), "image/png")
