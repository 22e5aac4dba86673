"""Readers of the store: ``bench table``, ``bench export``, ``bench report``."""
from __future__ import annotations

from pathlib import Path

import click

from bench.cli._common import friendly, store_options, store_selection
from bench.errors import BenchError


@click.command()
@store_options
@click.option("--kind", type=click.Choice(["main", "gains", "decoders", "contamination"]), default="main", show_default=True,
              help="main: categories × methods with refiners side by side and the gain over none; "
                   "gains: the same with only the gains (many refiners per category on one page) and, with "
                   "several seeds, how many seeds each category's gain wins; "
                   "decoders: per method, refiners as rows (mean ± std over seeds and the gain over none, "
                   "best in bold) with their cost; "
                   "contamination: metrics per pseudo-normal contamination ratio.")
@click.option("--metric", "metrics", multiple=True,
              help="Metric(s) of the table (default: the four pixel metrics, or the image metrics of a store "
                   "without pixel metrics).")
@click.option("--scope", type=click.Choice(["g2k", "stream"]), default="g2k", show_default=True,
              help="g2k: groups 2..k, the images that a trained refiner refined; stream: every test image "
                   "(in group 1 trained refiners keep the coarse maps unless --warmup self; training-free ones "
                   "refine it).")
@click.option("--format", "fmt", type=click.Choice(["md", "latex", "csv"]), default="md", show_default=True,
              help="csv: one table of numbers (value, std, gain, ci_low, ci_high, wins, ... per row).")
@friendly
def table(out: Path, tracking_uri: str | None, experiment: str, kind: str, metrics: tuple[str, ...], scope: str,
          runs: str, fmt: str) -> None:
    """Render paper-style tables from the MLflow store.

    Values: mean ± std over seeds (one seed: the value). Gains over none: 95% paired bootstrap
    interval over the test images, * when it excludes 0; wins: (category, seed) pairs won over
    none. Different configurations are never averaged: --runs all shows one block for each.

    \b
    Examples:
      bench table
      bench table --kind contamination --format latex
      bench table --kind decoders --runs all      # mean ± std over the seeds of each configuration
      bench table --kind gains --runs all         # every refiner's gain per category, side by side
      bench table --runs all --metric pixel_ap --format csv
    """
    import pandas as pd

    from bench.render import render, tex
    from bench.tables import build_tables

    _, selection = store_selection(out, tracking_uri, experiment, runs)
    blocks = selection.blocks()
    frames, texts = [], []
    for config, units in blocks:
        tables = build_tables(kind, units, metrics, scope)
        if fmt == "csv":
            frames += [t.numbers.assign(config=config) for t in tables]
            continue
        title = selection.title(config, units)
        texts.append(("## " + title if fmt == "md" else "% " + tex(title)) if len(blocks) > 1 else "")
        texts += [render(t, fmt) + "\n" for t in tables]
    click.echo(pd.concat(frames).to_csv(index=False, float_format="%.6g").rstrip("\n") if fmt == "csv"
               else "\n".join(t for t in texts if t))


@click.command("export")
@store_options
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: the tidy table; json: the same rows with each configuration, its runs' git commit "
                   "and package versions.")
@click.option("--output", type=click.Path(path_type=Path), help="Write to this file (default: standard output).")
@friendly
def export(out: Path, tracking_uri: str | None, experiment: str, runs: str, fmt: str, output: Path | None) -> None:
    """Export results as one tidy table (values are fractions, intervals 95% bootstrap): a row per
    unit, metric and scope (statistic 'value') and per gain over none (statistic 'gain'); config_hash
    is the configuration without its seed.

    \b
    Examples:
      bench export --runs all --output results.csv
      bench export --runs all --format json --output results.json
    """
    from bench.export import results_document, tidy, write
    from bench.storeaccess import refuse_database

    if output is not None:
        refuse_database(output)
    store, selection = store_selection(out, tracking_uri, experiment, runs)
    text = write(tidy(selection) if fmt == "csv" else results_document(store, selection), fmt)
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text + "\n")
    except OSError as exc:
        raise BenchError(f"--output {output}: cannot write it ({exc.strerror})") from None
    click.echo(f"wrote {output}", err=True)


@click.command()
@store_options
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="The HTML file to write.  [default: <out>/report.html]")
@friendly
def report(out: Path, tracking_uri: str | None, experiment: str, runs: str, output: Path | None) -> None:
    """Write one self-contained HTML page of the results: leaderboard, decoders and cost,
    contamination, PGT progress, figure grids, and how to reproduce each run.

    The page embeds its plots and images: it opens from disk with no server and no network.

    \b
    Examples:
      bench report                                  # results/report.html of the latest run
      bench report --runs all --output seeds.html   # mean ± std over the seeds of one configuration
    """
    from bench.report import check_output, write_report

    output = check_output(output or out / "report.html")
    store, selection = store_selection(out, tracking_uri, experiment, runs)
    path = write_report(store, selection, output, tracking_uri or str(out))
    click.echo(f"report: {path.resolve()} ({path.stat().st_size / 1e6:.1f} MB)")
