"""``bench``: a thin click shell over ``bench.api``. Errors print one line, never a traceback."""
from __future__ import annotations

import warnings

import click

LISTS = ("methods", "refiners", "datasets", "backbones")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one ``Warning: ...`` line, without file and line numbers."""
    return f"Warning: {message}\n"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="anorefiner-bench")
def main() -> None:
    """Benchmark refiners of zero-shot industrial anomaly maps (AnoRefiner: ARD + PGT).

    \b
    Quick start (embedded synthetic dataset, offline pretrained CNN):
      bench run                       # every method, ARD vs none, results/ as MLflow store
      bench table                     # the paper-style table of the latest run
      bench ui                        # browse runs in the MLflow UI
    """
    warnings.formatwarning = _one_line_warning


@main.command("list")
@click.argument("what", required=False, type=click.Choice(LISTS))
@click.option("--details", is_flag=True, help="Methods: also each one's settings and deviations from the official code.")
def list_(what: str | None, details: bool) -> None:
    """List registered methods, refiners, datasets and backbones.

    Methods are shown with their paper, default backbone and whether they need training.

    \b
    Examples:
      bench list
      bench list methods --details
    """
    from tabulate import tabulate

    from bench import registry
    from bench.catalog import method_catalog

    for kind in [what] if what else LISTS:
        click.secho(kind, bold=True)
        if kind == "methods":
            catalog = method_catalog()
            rows = [[m.name, m.paper, m.default_backbone, m.training, "yes" if m.in_all else "named only"]
                    for m in catalog]
            click.echo(tabulate(rows, ["method", "paper", "default backbone", "training", "in 'all'"],
                                maxcolwidths=[None, 56, None, 14, 6]))
            for m in catalog if details else []:
                click.secho(f"\n{m.name}", bold=True)
                for key, value in m.settings.items():
                    click.echo(f"  {key}: {value}")
                if m.deviations:
                    click.echo(f"  deviations from the official code: {m.deviations}")
            continue
        reg = getattr(registry, kind.upper())
        for name in reg.names():
            click.echo(f"  {name:<20} {reg.entry(name).description}")


from bench.cli._data import data  # noqa: E402  (the commands, each in the module of its concern)
from bench.cli._results import export, report, table  # noqa: E402
from bench.cli._run import eval_, run  # noqa: E402
from bench.cli._serve import server, ui  # noqa: E402

for _command in (data, run, eval_, table, export, report, ui, server):
    main.add_command(_command)
