"""Paper-style tables from the units logged in the MLflow store: main, gains, decoders, contamination.

Each builder returns a ``bench.render.Table``: text cells for markdown and LaTeX, and a tidy
frame of the numbers behind them for CSV. Values are in points (percent); a value is
``mean ± std`` over seeds where there are several (sample std), a plain number for one seed.
Gains over ``none`` carry their paired-bootstrap 95% interval and a ``*`` when it excludes 0
(``bench.gains``); the consistency row counts the (category, seed) pairs a refiner wins.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.bootstrap import GROUP_PREFIX
from bench.errors import BenchError
from bench.gains import BASELINE, MEAN, gain_table
from bench.render import Table, number

PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
SCOPES = ("g2k", "stream")  # groups 2..k (what a trained refiner refined) or the whole test stream
NAMES = {"auroc": "AUROC", "ap": "AP", "f1_max": "F1-max", "aupro": "AUPRO", "aupro_binned": "AUPRO (binned)"}
SHORT = {"pixel_aupro": "AUPRO"}
COST_COLUMNS = {"n_parameters": "params", "train_seconds_per_group": "train s/group", "refine_ms_per_image": "refine ms/img"}


def scoped(metrics: tuple[str, ...], scope: str, units: pd.DataFrame) -> list[str]:
    """Metric names for a scope: ``pixel_ap_g2k`` for groups 2..k, ``pixel_ap`` for the whole stream.

    Runs with a single group have no ``_g2k`` metrics; their whole-stream metrics are used then.
    """
    if scope not in SCOPES:
        raise BenchError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "stream":
        return list(metrics)
    return [f"{m}_g2k" if f"{m}_g2k" in units else m for m in metrics]


def default_metrics(units: pd.DataFrame) -> tuple[str, ...]:
    """The pixel metrics when the store holds them, else the image metrics (datasets without masks)."""
    held = [m for m in PIXEL_METRICS if m in units and units[m].notna().any()]
    return PIXEL_METRICS if held else IMAGE_METRICS


def metric_label(name: str) -> str:
    """``pixel_ap_g2k`` → ``pixel AP (groups 2..k)``; other keys with spaces for underscores."""
    base, scope = (name[:-4], " (groups 2..k)") if name.endswith("_g2k") else (name, "")
    kind, _, rest = base.partition("_")
    if base in SHORT:
        return SHORT[base] + scope
    if kind in ("pixel", "image") and rest in NAMES:
        return f"{kind} {NAMES[rest]}{scope}"
    return base.replace("_", " ") + scope


def _short(name: str) -> str:
    """``pixel_ap_g2k`` → ``AP``: the metric's name alone, for compact cells."""
    return NAMES.get(name.removesuffix("_g2k").partition("_")[2], name)


def _percent(name: str) -> bool:
    return name.split("_")[0] in ("pixel", "image")


def _series(name: str) -> bool:
    """A metric logged as a series (per PGT group, the training loss): the store keeps its last step."""
    return name.startswith(GROUP_PREFIX) or name == "loss"


def _check(units: pd.DataFrame, metrics) -> None:
    for metric in metrics:
        if metric not in units or _series(metric):
            names = sorted(c for c in units.columns
                           if units[c].dtype.kind == "f" and c != "contamination" and not _series(c))
            what = ("is a series, one value per PGT group or step (`bench report` plots it), not a unit metric"
                    if metric in units else "is not in the store")
            raise BenchError(f"metric {metric!r} {what}; logged metrics: {', '.join(names)}")


def _value(mean: float, std: float, n: int, digits: int = 1) -> str:
    return number(mean, digits) + (f" ± {number(std, digits)}" if n > 1 and np.isfinite(std) else "")


def _gain(gain: float, low: float, high: float, significant: bool) -> str:
    text = number(gain, signed=True) + ("*" if significant else "")
    return text + (f" [{number(low, signed=True)}, {number(high, signed=True)}]" if np.isfinite(low) else "")


def _clean(units: pd.DataFrame) -> pd.DataFrame:
    return units[units.contamination == units.contamination.min()]


def _ordered(refiners) -> list[str]:
    refiners = list(dict.fromkeys(refiners))
    return [BASELINE] * (BASELINE in refiners) + [r for r in refiners if r != BASELINE]


def seed_mean(values: pd.Series) -> float:
    """The mean over seeds (or categories), undefined when one of them is: a metric of groups 2..k
    that one seed's stream leaves undefined (no anomaly there) would otherwise drop out, and the mean
    of the other seeds read as the mean of all."""
    return values.mean(skipna=False)


def seed_std(values: pd.Series) -> float:
    """The sample std over seeds, undefined when one of them is (see ``seed_mean``)."""
    return values.std(skipna=False)


def _seed_stats(frame: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Mean, sample std and count over seeds of ``metric`` per ``keys`` (category mean per seed with MEAN)."""
    per_category = frame.groupby([*keys, "category", "seed"], dropna=False)[metric].mean().reset_index()
    per_seed_mean = per_category.groupby([*keys, "seed"], dropna=False)[metric].agg(seed_mean)
    stats = [per_category.groupby([*keys, "category"], dropna=False)[metric].agg([seed_mean, seed_std, "size"]),
             per_seed_mean.groupby(keys, dropna=False).agg([seed_mean, seed_std, "size"]).assign(category=MEAN)
             .set_index("category", append=True)]
    return pd.concat(stats)


def _over_seeds(units: pd.DataFrame) -> str:
    """What a table's values are over: ``mean over 3 seeds``, or ``seed 0`` where there is one."""
    seeds = sorted(units.seed.unique())
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over {len(seeds)} seeds"


def main_table(units: pd.DataFrame, metric: str = "pixel_ap", values: bool = True) -> Table:
    """Rows: categories and their unweighted mean, then the consistency count; per method, refiners
    side by side and each one's gain over ``none`` with its interval. Units without contamination.

    ``values=False`` keeps only the gains (``--kind gains``): many refiners compared per category
    in a table that still fits a page, each gain followed by the seeds it wins where there are several."""
    _check(units, [metric])
    clean = _clean(units)
    scale = 100 if _percent(metric) else 1
    stats = _seed_stats(clean, ["method", "refiner"], metric)
    gains = gain_table(clean, [metric]).set_index(["method", "refiner", "category"])
    categories = [*sorted(clean.category.unique()), MEAN]
    columns, cells, numbers, bold = [("", "category")], {c: [c] for c in categories}, {}, set()
    per_seed_wins = not values and clean.seed.nunique() > 1  # the gains-only table: each cell's seeds won
    for method in dict.fromkeys(clean.method):
        refiners = _ordered(clean[clean.method == method].refiner)
        shown = {}  # category -> [(value, column)] of this method: the best is bold
        for refiner in refiners:
            if values:
                columns.append((method, refiner))
            for category in categories:
                mean, std, n = (stats.loc[(method, refiner, category)] if (method, refiner, category) in stats.index
                                else (np.nan, np.nan, 0))
                if values:
                    cells[category].append(_value(scale * mean, scale * std, int(n)))
                    shown.setdefault(category, []).append((scale * mean, len(columns) - 1))
                numbers[(method, refiner, category)] = dict(metric=metric, method=method, refiner=refiner,
                                                            category=category, value=scale * mean, std=scale * std,
                                                            n_seeds=int(n))
        for r, category in enumerate(categories if values else []):
            top = max((v for v, _ in shown[category] if np.isfinite(v)), default=np.nan)
            bold |= {(r, column) for v, column in shown[category] if v == top and len(shown[category]) > 1}
        for refiner in refiners[1:] if refiners[0] == BASELINE else []:
            columns.append((method, f"Δ{refiner}"))
            for category in categories:
                g = gains.loc[(method, refiner, category)] if (method, refiner, category) in gains.index else None
                cells[category].append("" if g is None else _gain(scale * g.gain, scale * g.ci_low, scale * g.ci_high,
                                                                     g.significant)
                                       + (f" {int(g.wins)}/{int(g.pairs)}" if per_seed_wins else ""))
                if g is not None:
                    numbers[(method, refiner, category)].update(
                        gain=scale * g.gain, ci_low=scale * g.ci_low, ci_high=scale * g.ci_high,
                        significant=int(g.significant), wins=g.wins, pairs=g.pairs)
    rows = [cells[c] for c in categories]
    wins = ["wins vs none"] + [
        f"{int(gains.loc[(m, name[1:], MEAN)].wins)}/{int(gains.loc[(m, name[1:], MEAN)].pairs)}"
        if name.startswith("Δ") and (m, name[1:], MEAN) in gains.index else "" for m, name in columns[1:]]
    unit = " (%)" if _percent(metric) else ""
    if clean.contamination.min() > 0:  # a run without a clean block: say which contamination is shown
        unit += f"; pseudo-normal contamination {clean.contamination.min():g}"
    return Table(columns, rows + ([wins] if any(wins[1:]) else []), pd.DataFrame(list(numbers.values())),
                 caption=f"{metric_label(metric)}{unit}; " + (f"{_over_seeds(clean)}; gains over none" if values else
                                                                  f"gains over none, {_over_seeds(clean)},")
                         + " with 95% paired-bootstrap intervals (* excludes 0)",
                 label=f"tab:{metric.replace('_', '-')}", bold=bold,
                 rules={len(categories) - 1} | ({len(categories)} if any(wins[1:]) else set()),
                 notes=["Marked *: the 95% interval excludes 0. wins: (category, seed) pairs where the refiner beats none"
                        + ("; after each gain, the seeds it wins of that category's." if per_seed_wins else ".")]
                 if any(wins[1:]) else [])


def decoder_table(units: pd.DataFrame, metrics: list[str]) -> Table:
    """Per method, refiners as rows: each metric's category mean as mean ± std over seeds (best in
    bold) with the gain over ``none`` and its interval in brackets, in how many (category, seed)
    pairs the refiner beats ``none`` per metric, and its cost."""
    _check(units, metrics)
    clean = _clean(units)
    gains = gain_table(clean, metrics)
    gains = gains[gains.category == MEAN].set_index(["method", "refiner", "metric"])
    stats = {m: _seed_stats(clean, ["method", "refiner"], m) for m in metrics}
    columns = [("", "method"), ("", "refiner"), *[("", metric_label(m)) for m in metrics], ("", "wins vs none"),
               *[("", name) for name in COST_COLUMNS.values()]]
    rows, numbers, bold, rules = [], [], set(), set()
    for method in dict.fromkeys(clean.method):
        if rows:
            rules.add(len(rows))
        first = len(rows)
        for refiner in _ordered(clean[clean.method == method].refiner):
            unit = clean[(clean.method == method) & (clean.refiner == refiner)]
            row, record = [method, refiner], dict(method=method, refiner=refiner)
            for metric in metrics:
                mean, std, n = stats[metric].loc[(method, refiner, MEAN)]
                scale = 100 if _percent(metric) else 1
                cell = _value(scale * mean, scale * std, int(n))
                record.update({metric: scale * mean, f"{metric}_std": scale * std, "n_seeds": int(n)})
                if (method, refiner, metric) in gains.index:
                    g = gains.loc[(method, refiner, metric)]
                    cell += f" ({_gain(scale * g.gain, scale * g.ci_low, scale * g.ci_high, g.significant)})"
                    record.update({f"{metric}_gain": scale * g.gain, f"{metric}_ci_low": scale * g.ci_low,
                                   f"{metric}_ci_high": scale * g.ci_high, f"{metric}_wins": g.wins,
                                   f"{metric}_pairs": g.pairs})
                row.append(cell)
            row.append(", ".join(f"{_short(m)} {int(gains.loc[(method, refiner, m)].wins)}/"
                                 f"{int(gains.loc[(method, refiner, m)].pairs)}"
                                 for m in metrics if (method, refiner, m) in gains.index) or "-")
            for key, name in COST_COLUMNS.items():
                value = unit[key].mean() if key in unit else float("nan")
                record[key] = value
                row.append(("0" if not value else f"{value / 1e6:.2f}M") if key == "n_parameters" else number(value))
            rows.append(row)
            numbers.append(record)
        for c, metric in enumerate(metrics, start=2):
            values = [numbers[r][metric] for r in range(first, len(rows))]
            top = np.nanmax(values) if np.isfinite(values).any() else np.nan
            bold |= {(r, c) for r in range(first, len(rows)) if numbers[r][metric] == top}
    return Table(columns, rows, pd.DataFrame(numbers),
                 caption=f"Refiners in the same protocol: category mean, {_over_seeds(clean)} (%), best in bold, "
                         "(gain over none [95% paired-bootstrap interval], * excludes 0), wins over none per "
                         "(category, seed), cost", label="tab:decoders", bold=bold, rules=rules)


def contamination_table(units: pd.DataFrame, metrics: tuple[str, ...] = ("pixel_ap", "pixel_aupro")) -> Table:
    """Rows: contamination ratios; columns: method, refiner and metric, mean over categories (± std over seeds)."""
    _check(units, metrics)
    ratios = sorted(units.contamination.unique())
    columns, rows, numbers = [("", "contamination")], [[f"{r:g}"] for r in ratios], []
    for metric in metrics:
        stats = _seed_stats(units, ["method", "refiner", "contamination"], metric)
        scale = 100 if _percent(metric) else 1
        for method, refiner in dict.fromkeys(zip(units.method, units.refiner)):
            columns.append((f"{method} {refiner}", metric_label(metric)))
            for i, ratio in enumerate(ratios):
                key = (method, refiner, ratio, MEAN)
                mean, std, n = stats.loc[key] if key in stats.index else (np.nan, np.nan, 0)
                rows[i].append(_value(scale * mean, scale * std, int(n)))
                numbers.append(dict(metric=metric, method=method, refiner=refiner, contamination=ratio,
                                    value=scale * mean, std=scale * std, n_seeds=int(n)))
    return Table(columns, rows, pd.DataFrame(numbers), caption="Pseudo-normal contamination: mean over categories (%)",
                 label="tab:contamination")


KINDS = ("main", "gains", "decoders", "contamination")


def build_tables(kind: str, units: pd.DataFrame, metrics: tuple[str, ...] = (), scope: str = "g2k") -> list[Table]:
    """The tables of ``kind`` for the units of one configuration: ``metrics`` (default: what the
    store holds, see ``default_metrics``) in ``scope``."""
    if kind == "decoders":
        return [decoder_table(units, scoped(tuple(metrics) or default_metrics(units), scope, units))]
    if kind == "contamination":
        held = tuple(m for m in ("pixel_ap", "pixel_aupro") if m in units) or default_metrics(units)[:2]
        return [contamination_table(units, tuple(scoped(tuple(metrics) or held, scope, units)))]
    if kind not in ("main", "gains"):
        raise BenchError(f"unknown table kind {kind!r}; choose one of {', '.join(KINDS)}")
    return [main_table(units, m, values=kind == "main")
            for m in scoped(tuple(metrics) or default_metrics(units), scope, units)]
