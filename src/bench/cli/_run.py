"""``bench run`` (the benchmark) and ``bench eval`` (maps made elsewhere)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from bench.cli._common import alias, friendly
from bench.executors import EXECUTORS


@click.command()
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
              help="serial: in this process; processes: one worker process per core on this machine; ray: each "
                   "(category, method) as a task on a Ray cluster.  [default: serial]")
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
    click.echo("\n_g2k: groups 2..k, the images a trained refiner refined (in group 1 trained refiners keep the "
               "coarse maps, training-free ones refine it). "
               "`bench table --scope stream` shows the whole stream.")


@click.command("eval")
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
