"""Paper-style tables rendered from the units logged in the MLflow store (markdown, LaTeX, CSV)."""
from __future__ import annotations

import re

import pandas as pd
from tabulate import tabulate

from bench.errors import BenchError

PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
FORMATS = ("md", "latex", "csv")
SCOPES = ("g2k", "stream")  # groups 2..k (what a trained refiner refined) or the whole test stream
BASELINE = "none"


def scoped(metrics: tuple[str, ...], scope: str, units: pd.DataFrame) -> list[str]:
    """Metric names for a scope: ``pixel_ap_g2k`` for groups 2..k, ``pixel_ap`` for the whole stream.

    Runs with a single group have no ``_g2k`` metrics; their whole-stream metrics are used then.
    """
    if scope not in SCOPES:
        raise BenchError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "stream":
        return list(metrics)
    return [f"{m}_g2k" if f"{m}_g2k" in units else m for m in metrics]


def _mean_over_seeds(units: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    if metric not in units:
        raise BenchError(f"metric {metric!r} is not in the store; logged metrics: {', '.join(sorted(_metric_names(units)))}")
    return units.groupby(keys, dropna=False)[metric].mean().reset_index()


def _metric_names(units: pd.DataFrame) -> list[str]:
    return [c for c in units.columns if c not in ("dataset", "method", "refiner", "contamination", "category", "seed")]


def main_table(units: pd.DataFrame, metric: str = "pixel_ap") -> pd.DataFrame:
    """Rows: categories and their unweighted mean; per method, refiners side by side and the gain over ``none``.

    Uses the units without contamination; values in percent, averaged over seeds when several.
    """
    clean = units[units.contamination == units.contamination.min()]
    frame = _mean_over_seeds(clean, ["method", "refiner", "category"], metric)
    table = frame.pivot_table(index="category", columns=["method", "refiner"], values=metric, dropna=False) * 100
    table.loc["Mean"] = table.mean(axis=0, skipna=False)  # undefined in one category: undefined mean
    columns = {}
    for method in table.columns.get_level_values(0).unique():
        refiners = list(table[method].columns)
        ordered = [BASELINE] * (BASELINE in refiners) + [r for r in refiners if r != BASELINE]
        for refiner in ordered:
            columns[f"{method} {refiner}"] = table[(method, refiner)]
            if refiner != BASELINE and BASELINE in refiners:
                columns[f"{method} Δ{refiner}"] = table[(method, refiner)] - table[(method, BASELINE)]
    return pd.DataFrame(columns).rename_axis(f"{metric} (%)")


def contamination_table(units: pd.DataFrame, metrics: tuple[str, ...] = ("pixel_ap", "pixel_aupro")) -> pd.DataFrame:
    """Rows: contamination ratios; columns: method, refiner and metric, mean over categories (percent)."""
    columns = {}
    for metric in metrics:
        frame = _mean_over_seeds(units, ["method", "refiner", "contamination", "category"], metric)
        means = frame.groupby(["method", "refiner", "contamination"])[metric].mean() * 100
        for (method, refiner), series in means.groupby(level=[0, 1]):
            columns[f"{method} {refiner} {metric}"] = series.droplevel([0, 1])
    return pd.DataFrame(columns).rename_axis("contamination")


COST_COLUMNS = {"n_parameters": "params", "train_seconds_per_group": "train s/group", "refine_ms_per_image": "refine ms/img"}


def decoder_table(units: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per method, refiners as rows: each metric's category mean (percent) as mean ± std over seeds,
    the best mean per column in bold, and each refiner's cost."""
    clean = units[units.contamination == units.contamination.min()]
    rows = []
    for (method, refiner), unit in clean.groupby(["method", "refiner"]):
        per_seed = unit.groupby("seed")[metrics].mean() * 100  # category mean, per seed
        row = {"method": method, "refiner": refiner}
        for metric in metrics:
            row[metric] = (per_seed[metric].mean(), per_seed[metric].std(ddof=0))
        for key, name in COST_COLUMNS.items():
            row[name] = unit[key].mean() if key in unit else float("nan")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for metric in metrics:
        best = frame.groupby("method")[metric].transform(lambda cells: max(m for m, _ in cells))
        frame[metric] = [_cell(m, s, m == b) for (m, s), b in zip(frame[metric], best)]
    frame["params"] = frame["params"].map(lambda n: f"{n / 1e6:.2f}M" if n else "0")
    frame["train s/group"] = frame["train s/group"].map(lambda t: f"{t:.1f}")
    frame["refine ms/img"] = frame["refine ms/img"].map(lambda t: f"{t:.1f}")
    frame.index = frame.pop("method") + " / " + frame.pop("refiner")
    return frame.rename_axis(f"method / refiner (% over {clean.seed.nunique()} seed(s))")


def _cell(mean: float, std: float, best: bool) -> str:
    text = f"{mean:.1f} ± {std:.1f}"
    return f"**{text}**" if best else text


def render(table: pd.DataFrame, fmt: str = "md", digits: int = 1) -> str:
    """A table as GitHub markdown, LaTeX (booktabs; ``**x**`` cells become ``\\textbf{x}``) or CSV."""
    if fmt == "csv":
        return table.to_csv(float_format=f"%.{digits + 2}f")
    if fmt not in FORMATS:
        raise BenchError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    headers = [table.index.name or "", *table.columns]
    table = table.astype(object).where(table.notna(), None)  # NaN (an undefined metric) prints as "undef"
    if fmt == "md":
        return tabulate(table, headers=headers, tablefmt="github", floatfmt=f".{digits}f", missingval="undef")
    escaped = table.rename(index=_latex, columns=_latex).map(lambda v: _latex(v) if isinstance(v, str) else v)
    escaped = escaped.astype(object).where(escaped.notna(), None)
    text = tabulate(escaped, headers=[_latex(h) for h in headers], tablefmt="latex_raw",
                    floatfmt=f".{digits}f", missingval="undef")
    rules = iter(["\\toprule", "\\midrule", "\\bottomrule"])
    return "\n".join(next(rules, line) if line.strip() == "\\hline" else line for line in text.splitlines())


def _latex(text: object) -> object:
    """Escape LaTeX specials; ``**x**`` (best cell) becomes ``\\textbf{x}``."""
    if not isinstance(text, str):
        return text
    text = re.sub(r"([_%&#$])", r"\\\1", text).replace("±", "$\\pm$")
    return re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", text)
