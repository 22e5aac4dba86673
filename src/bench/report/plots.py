"""The report's plots, drawn with matplotlib and returned as self-contained ``data:`` URIs (SVG).

Text is drawn as paths, so the page needs no font from anywhere.
"""
from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.report.leaderboard import COSTS, Row, label  # noqa: E402

STYLE = {"svg.fonttype": "path", "font.size": 8, "axes.spines.top": False, "axes.spines.right": False,
         "svg.hashsalt": "bench-report"}  # fixed ids: the same store gives the same bytes


def data_uri(payload: bytes, mime: str) -> str:
    """Bytes as a ``data:`` URI, so that the page carries them itself."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _svg(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return data_uri(buffer.getvalue(), "image/svg+xml")


def cost_plot(rows: list[Row], metric: str) -> str:
    """``metric`` (mean ± std over seeds) against each cost of each method × refiner."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(COSTS), figsize=(3.0 * len(COSTS), 2.6), sharey=True)
        methods = sorted({r.method for r in rows})
        colours = dict(zip(methods, plt.cm.tab10.colors))
        for ax, (key, name) in zip(axes, COSTS.items()):
            for row in rows:
                cell = row.cells[metric]
                x = row.costs[key] / 1e6 if key == "n_parameters" else row.costs[key]
                std = 0.0 if math.isnan(cell.std) else cell.std
                ax.errorbar(x, cell.mean, yerr=std, fmt="o", color=colours[row.method], ms=4, capsize=2)
                ax.annotate(row.refiner if len(methods) == 1 else f"{row.method}/{row.refiner}", (x, cell.mean),
                            textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_xlabel("parameters (M)" if key == "n_parameters" else name)
            ax.margins(x=0.25, y=0.15)
        axes[0].set_ylabel(f"{label(metric)} (%)")
        fig.tight_layout()
        return _svg(fig)


def contamination_plot(units: pd.DataFrame, metrics: list[str]) -> str:
    """Each metric (mean over categories and seeds) against the pseudo-normal contamination ratio,
    one line per method × refiner."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.5), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            per_seed = units.groupby(["method", "refiner", "contamination", "seed"])[metric].mean() * 100
            curve = per_seed.groupby(level=["method", "refiner", "contamination"]).mean()
            for (method, refiner), line in curve.groupby(level=["method", "refiner"]):
                ratios = line.index.get_level_values("contamination")
                ax.plot(ratios, line.to_numpy(), marker="o", ms=3, label=f"{method} {refiner}")
            ax.set_xlabel("contamination ratio")
            ax.set_title(label(metric))
        axes[0][0].set_ylabel("%")
        axes[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        return _svg(fig)


def loss_plot(losses: pd.DataFrame) -> str:
    """Training loss of each trainable refiner over PGT's rounds, one line per category; dotted
    lines mark where training moves on to the next group (where the store says which is which)."""
    refiners = sorted(losses.refiner.unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(refiners), figsize=(max(6.0, 3.6 * len(refiners)), 2.6), squeeze=False)
        for ax, refiner in zip(axes[0], refiners):
            frame = losses[losses.refiner == refiner].sort_values(["group", "step"])
            for (method, category), curve in frame.groupby(["method", "category"]):
                ax.plot(range(len(curve)), curve.loss.to_numpy(), lw=0.9,
                        label=category if frame.method.nunique() == 1 else f"{method} {category}")
            if frame.group.notna().all():
                steps = frame.groupby(["method", "category", "group"]).size().groupby("group").max()
                for boundary in steps.cumsum().to_numpy()[:-1]:
                    ax.axvline(boundary - 0.5, color="grey", ls=":", lw=0.8)
            ax.set_title(refiner)
            ax.set_xlabel("training step (groups in turn)")
        axes[0][0].set_ylabel("loss")
        axes[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        return _svg(fig)


def group_plot(group_metrics: pd.DataFrame) -> str:
    """Each per-group metric (mean over categories) against the PGT group, one line per method ×
    refiner: does refining improve as PGT moves through the stream?"""
    metrics = list(dict.fromkeys(group_metrics.metric))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.5), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            means = group_metrics[group_metrics.metric == metric].groupby(["method", "refiner", "group"]).value.mean()
            for (method, refiner), line in (means * 100).groupby(level=["method", "refiner"]):
                ax.plot(line.index.get_level_values("group"), line.to_numpy(), marker="o", ms=3,
                        label=f"{method} {refiner}")
            ax.set_title(label(metric))
            ax.set_xlabel("PGT group")
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0][0].set_ylabel("%")
        axes[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        return _svg(fig)
