"""``bench``: a thin click shell over ``bench.api``. Errors print one line, never a traceback."""
from __future__ import annotations

import errno
import json
import warnings
from functools import wraps
from pathlib import Path

import click

from bench import embedded
from bench.errors import BenchError
from bench.executors import EXECUTORS

LISTS = ("methods", "refiners", "datasets", "backbones")


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a full or read-only disk, wherever it is hit


OUT_OF_MEMORY = ("can't allocate memory", "out of memory")  # torch's CPU and CUDA allocator messages


def friendly(command):
    """Turn BenchError, a write that fails for want of space, and running out of memory into a
    one-line ``Error: ...`` and exit code 1."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BenchError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            raise click.ClickException(f"cannot write {exc.filename or 'a file'}: {exc.strerror}") from None
        except (MemoryError, RuntimeError) as exc:
            # torch's CPU allocator and CUDA raise RuntimeErrors (OutOfMemoryError) rather than MemoryError
            if not isinstance(exc, MemoryError) and not any(s in str(exc) for s in OUT_OF_MEMORY):
                raise
            raise click.ClickException("out of memory; use smaller sizes (--eval-size, --batch-size) or fewer "
                                       "images (--categories)") from None

    return wrapper


def alias(value, old_value, name: str, old_name: str):
    """The value of option ``name``, or of its deprecated spelling ``old_name`` (one warning line)."""
    if old_value is None:
        return value
    click.echo(f"Warning: {old_name} is deprecated; use {name}", err=True)
    if value is not None and value != old_value:
        raise BenchError(f"{name} and its old spelling {old_name} disagree ({value} vs {old_value}); give {name} only")
    return old_value


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


@main.group()
def data() -> None:
    """Write the embedded synthetic dataset, or check a dataset tree."""


@data.command("synth")
@click.option("--data-root", "root", type=click.Path(path_type=Path), default=None,
              help="Folder to write the MVTec-layout tree into (as `bench run --data-root`).  "
                   "[default: results/data/synthetic]")
@click.option("--out", "old_root", type=click.Path(path_type=Path), default=None, hidden=True,
              help="Deprecated spelling of --data-root.")
@click.option("--seed", default=embedded.SEED, show_default=True, help="Generator seed (the embedded default uses 0).")
@click.option("--n-test", default=embedded.N_TEST, show_default=True, help="Test images per category (about a third anomalous).")
@click.option("--size", default=embedded.SIZE, show_default=True, help="Image side in pixels.")
@click.option("--categories", default=None, help="Comma list of categories to write (default: all).")
@friendly
def data_synth(root: Path | None, old_root: Path | None, seed: int, n_test: int, size: int, categories: str | None) -> None:
    """Write the embedded synthetic dataset (procedural textures and objects with pixel masks).

    \b
    Example:
      bench data synth --data-root /tmp/synthetic --n-test 60
    """
    root = alias(root, old_root, "--data-root", "--out") or embedded.embedded_root(Path("results"))
    cats = [c.strip() for c in categories.split(",")] if categories else None
    path = embedded.generate(root, seed=seed, categories=cats, n_test=n_test, size=size)
    click.echo(f"wrote {path}")


@data.command("photos")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Folder to write the MVTec-layout tree into.")
@click.option("--seed", default=0, show_default=True, help="Generator seed.")
@click.option("--n-test", default=60, show_default=True, help="Test images per category (about a third anomalous).")
@click.option("--size", default=256, show_default=True, help="Image side in pixels.")
@click.option("--categories", default=None, help="Comma list of categories to write (default: all).")
@friendly
def data_photos(root: Path, seed: int, n_test: int, size: int, categories: str | None) -> None:
    """Write the real-photograph set: crops of scikit-image's sample photographs with made defects.

    \b
    Needs scikit-image (pip install 'anorefiner-bench[photos]'). Example:
      bench data photos --root /tmp/photos && bench run --data-root /tmp/photos
    """
    from bench.photos import generate

    cats = [c.strip() for c in categories.split(",")] if categories else None
    click.echo(f"wrote {generate(root, seed=seed, categories=cats, n_test=n_test, size=size)}")


@data.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--dataset", default=None, help="Layout: mvtec, visa, folder or synthetic (default: detected).")
@click.option("--categories", default=None, help="Comma list of categories (default: all).")
@friendly
def data_check(path: Path, dataset: str | None, categories: str | None) -> None:
    """Validate a dataset tree (every image and mask is read) and summarise each category.

    \b
    Example:
      bench data check /data/mvtec_anomaly_detection
    """
    from tabulate import tabulate

    from bench.data import check_dataset, open_dataset, select_categories

    ds = open_dataset(path, dataset)
    rows = check_dataset(ds, select_categories(ds, categories))
    click.echo(f"{path}: {ds.name} layout, {len(rows)} categories")
    click.echo(tabulate(rows, headers="keys", tablefmt="github"))


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, path_type=Path), help="YAML file of options (any field of RunConfig).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset root (default: the embedded synthetic dataset, made on first use).")
@click.option("--dataset", help="Layout of --data-root: mvtec, visa, folder, synthetic (default: detected).")
@click.option("--categories", help="Comma list of categories (default: all).")
@click.option("--methods", help="'all' or a comma list of ZSAD methods (see `bench list methods`).  [default: all]")
@click.option("--refiners", help="'all' or a comma list of refiners; `none` always runs as the baseline.  [default: ard]")
@click.option("--refiner", "old_refiners", hidden=True, help="Deprecated spelling of --refiners.")
@click.option("--backbone", help="Backbone for every method (default: each method's published one).")
@click.option("--weights", help="Backbone weights: default, a pretrained tag, a checkpoint file, or 'random' (tests only).")
@click.option("--device", help="Compute device: cpu, cuda or cuda:N (as the config's device).  [default: cpu]")
@click.option("--seed", type=int, help="Seed of the stream order, synthesis and refiner init.  [default: 0]")
@click.option("--contamination", help="Pseudo-normal contamination sweep, e.g. 0,0.1,0.2,0.3,0.5.  [default: 0]")
@click.option("--n-groups", type=int, help="PGT groups per category.  [default: 4]")
@click.option("--group-size", type=int, help="PGT group size (overrides --n-groups).")
@click.option("--warmup", type=click.Choice(["none", "self"]), help="Group 1: keep coarse maps, or train on it and refine it.")
@click.option("--out", type=click.Path(path_type=Path), help="Results folder: MLflow store, embedded data.  [default: results]")
@click.option("--tracking-uri", help="Log to this MLflow tracking URI instead of <out>/mlflow.db.")
@click.option("--cache/--no-cache", default=None,
              help="Reuse backbone features cached under <out>/cache (content-addressed).  [default: cache]")
@click.option("--resume/--no-resume", default=None,
              help="Continue an interrupted run of the same config in the store (its finished units are kept), "
                   "or always start a new run.  [default: resume]")
@click.option("--executor", type=click.Choice(list(EXECUTORS)),
              help="serial: in this process; ray: each (category, method) as a task on a Ray cluster.  [default: serial]")
@click.option("--ray-address", help="--executor ray: the Ray cluster to use, e.g. HOST:6379 or auto "
                                    "(default: a local one on all cores, started for the run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any config field, e.g. --set pgt.synth_per_group=32 --set refiner_options.ard.steps=50.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly
def run(config_file: Path | None, overrides: tuple[str, ...], quiet: bool, old_refiners: str | None, **options) -> None:
    """Run ZSAD methods × refiners under the PGT protocol, log to MLflow, print the table.

    \b
    Examples:
      bench run                                          # embedded default
      bench run --methods all --refiners ard --seed 1
      bench run --data-root /data/mvtec --methods musc --refiners ard,none --categories bottle,wood
      bench run --refiners ard --contamination 0,0.1,0.2,0.3,0.5
      bench run --set pgt.n_groups=3 --set refiner_options.ard.steps=40
      bench run --executor ray                           # a local Ray cluster on all cores
      bench run --executor ray --ray-address HEAD:6379 --tracking-uri http://HOST:5000   # see `bench server`

    An interrupted run (killed, crashed) resumes when the same command runs again: its finished
    (category, method, contamination) blocks are kept, the others are redone (--no-resume: new run).
    """
    from bench.api import run as run_benchmark
    from bench.config import RunConfig, apply_overrides, load_yaml, parse_set
    from bench.render import render
    from bench.tables import default_metrics, main_table, scoped

    options["refiners"] = alias(options["refiners"], old_refiners, "--refiners", "--refiner")
    names = {"n_groups": "pgt.n_groups", "group_size": "pgt.group_size",
             "warmup": "pgt.warmup", "contamination": "pgt.contamination"}
    config = RunConfig()
    if config_file:
        apply_overrides(config, load_yaml(config_file))
    apply_overrides(config, {names.get(k, k): v for k, v in options.items() if v is not None})
    apply_overrides(config, parse_set(overrides))
    summary = run_benchmark(config, progress=not quiet)
    click.echo(f"MLflow run {summary.parent_id} in {config.tracking_uri or config.out}")
    for metric in scoped(default_metrics(summary.units), "g2k", summary.units):
        click.echo("\n" + render(main_table(summary.units, metric)))
    click.echo("\n_g2k: groups 2..k, the images a trained refiner refined (group 1 keeps coarse maps). "
               "`bench table --scope stream` shows the whole stream.")


@main.command("eval")
@click.option("--maps", "maps_root", required=True, type=click.Path(path_type=Path),
              help="Folder of <category>/test/<defect>/<name>.npy maps (optional <category>/image_scores.csv).")
@click.option("--data-root", type=click.Path(path_type=Path), required=True, help="The dataset the maps belong to.")
@click.option("--dataset", help="Layout of --data-root (default: detected).")
@click.option("--categories", help="Comma list of categories (default: all).")
@click.option("--eval-size", default=256, show_default=True, help="Maps and masks are resized to this side.")
@click.option("--mask-threshold", default=0.5, show_default=True, help="Resized masks are binarised at this value.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics per category and their mean as JSON.")
@friendly
def eval_(maps_root: Path, data_root: Path, dataset: str | None, categories: str | None, eval_size: int,
          mask_threshold: float, as_json: bool) -> None:
    """Score anomaly maps produced elsewhere with the same metrics as `bench run`.

    \b
    Example:
      bench eval --maps out/maps --data-root /data/mvtec --categories bottle --json
    """
    from bench.data import open_dataset, select_categories
    from bench.evaluation import evaluate_maps, json_safe

    ds = open_dataset(data_root, dataset)
    results = evaluate_maps(ds, select_categories(ds, categories), maps_root, eval_size, mask_threshold)
    if as_json:
        # an undefined metric (NaN, e.g. AUROC of a category without anomalies) is JSON null
        click.echo(json.dumps(json_safe(results), indent=2))
    else:
        import pandas as pd  # only for the table: --json starts without it

        from bench.render import frame_markdown

        click.echo(frame_markdown(pd.DataFrame(results).T.rename_axis("category") * 100))


def store_options(command):
    """--out, --tracking-uri, --experiment and --runs: which runs of which store a reader reads."""
    for option in reversed([
        click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
                     help="Results folder holding mlflow.db."),
        click.option("--tracking-uri", help="Read this MLflow tracking URI instead of <out>/mlflow.db."),
        click.option("--experiment", default="bench", show_default=True),
        click.option("--runs", default="latest", show_default=True,
                     help="'latest' (the run that finished last), 'all' (every finished run: one block per "
                          "configuration, mean over its seeds) or comma-separated run ids.")]):
        command = option(command)
    return command


def _selection(out: Path, tracking_uri: str | None, experiment: str, runs: str):
    from bench.identity import select
    from bench.tracking import open_store

    store = open_store(out, tracking_uri, experiment, create=False)  # a reader: creates nothing
    selection = select(store, runs, replicates=True)
    for note in selection.notes:
        click.echo(f"Warning: {note}", err=True)
    return store, selection


@main.command()
@store_options
@click.option("--kind", type=click.Choice(["main", "decoders", "contamination"]), default="main", show_default=True,
              help="main: categories × methods with refiners side by side and the gain over none; "
                   "decoders: per method, refiners as rows (mean ± std over seeds, best in bold) with their cost; "
                   "contamination: metrics per pseudo-normal contamination ratio.")
@click.option("--metric", "metrics", multiple=True,
              help="Metric(s) of the table (default: the four pixel metrics, or the image metrics of a store "
                   "without pixel metrics).")
@click.option("--scope", type=click.Choice(["g2k", "stream"]), default="g2k", show_default=True,
              help="g2k: groups 2..k, the images that a trained refiner refined; stream: every test image "
                   "(group 1 keeps its coarse maps unless --warmup self).")
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
      bench table --runs all --metric pixel_ap --format csv
    """
    import pandas as pd

    from bench.render import render, tex
    from bench.tables import build_tables

    _, selection = _selection(out, tracking_uri, experiment, runs)
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


@main.command("export")
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

    store, selection = _selection(out, tracking_uri, experiment, runs)
    text = write(tidy(selection) if fmt == "csv" else results_document(store, selection), fmt)
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text + "\n")
    except OSError as exc:
        raise BenchError(f"--output {output}: cannot write it ({exc.strerror})") from None
    click.echo(f"wrote {output}", err=True)


@main.command()
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
    store, selection = _selection(out, tracking_uri, experiment, runs)
    path = write_report(store, selection, output, tracking_uri or str(out))
    click.echo(f"report: {path.resolve()} ({path.stat().st_size / 1e6:.1f} MB)")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True, help="Holds mlflow.db.")
@click.option("--tracking-uri", help="Browse this database store (sqlite:///...) instead of <out>/mlflow.db.")
@click.option("--experiment", default="bench", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface (no authentication: trusted networks only).")
@click.option("--port", default=5000, show_default=True)
@friendly
def ui(out: Path, tracking_uri: str | None, experiment: str, host: str, port: int) -> None:
    """Start the MLflow UI for the store in --out (Ctrl-C stops it, with every worker it started).

    \b
    Example: bench ui --out /data/results --port 5001
    """
    from bench.server import start_ui

    raise SystemExit(start_ui(out, tracking_uri, experiment, host, port, click.echo))


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results folder: the default store <out>/mlflow.db and artifacts <out>/artifacts.")
@click.option("--port", default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on. The server has no authentication: bind an address other machines "
                   "reach (for workers there) only on a network you trust.")
@click.option("--backend-store-uri", help="Where runs are stored (default: sqlite <out>/mlflow.db).")
@click.option("--artifacts-destination", help="Where artifacts are stored (default: <out>/artifacts).")
@click.option("--workers", default=4, show_default=True, help="Server worker processes.")
@friendly
def server(out: Path, port: int, host: str, backend_store_uri: str | None, artifacts_destination: str | None,
           workers: int) -> None:
    """Start an MLflow tracking server for runs spread over workers (Ctrl-C stops it).

    \b
    Example:
      bench server --port 5000 &
      bench run --executor ray --tracking-uri http://127.0.0.1:5000
    """
    from bench.server import serve, server_uri, start
    from bench.tracking import default_uri, with_busy_timeout

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot create it ({exc.strerror}); choose a writable folder") from None
    store = backend_store_uri or with_busy_timeout(default_uri(out))
    process = start(store, artifacts_destination or str((out / "artifacts").resolve()), host, port, workers)
    uri = server_uri(host, port)
    click.echo(f"MLflow tracking server at {uri} (pid {process.pid}, store {store}); "
               f"pass --tracking-uri {uri}. Ctrl-C stops it.")
    raise SystemExit(serve(process))
