"""The ARD ablation of issue 15: none / ARD variants / DeSTSeg / RealNet / guided in one PGT protocol.

For every dataset and seed this runs ONE ``bench run`` with all the refiners side by side (same
groups, same pseudo-normals, same synthetic training data; ``none`` always runs), so everything
lands in one MLflow store (``--out``). Rerun after an interruption, it skips the (dataset, seed)
runs the store already finished and resumes the interrupted one. Then it prints ``bench table
--runs all``, one block per dataset (configuration): ``--kind decoders`` (each refiner's category mean over seeds of the four
pixel metrics, its gain over ``none`` with the 95% paired-bootstrap interval, win counts and cost),
then ``--kind gains`` (each refiner's gain per category).

    python scripts/ard_ablation.py --seeds 0,1,2 --data embedded --data photos
    python scripts/ard_ablation.py --seeds 0 --data embedded:pcb,pill --data photos:brick,ihc \\
        --refiners ard,ard_residual --out results/ard-pilot
    python scripts/ard_ablation.py --table-only --out results/ard-ablation

``--data`` is ``embedded`` (the embedded synthetic dataset), ``photos`` (the real-photograph set,
written under ``<out>/data/photos`` on first use; needs the extra ``photos``) or a dataset root,
each optionally followed by ``:cat1,cat2``. ``--protocol-set KEY=VALUE`` adds a ``--set`` to every
run (e.g. ``refiner_options.ard.validation_fraction=0.25`` for each trainable refiner).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

DEFAULT_REFINERS = "ard,ard_residual,ard_gated,ard_confidence,destseg,realnet,guided"


def bench(*args: str) -> None:
    """``bench ARGS`` in this process (the CLI's own parsing and errors); stops the script on failure."""
    from bench.cli import main as cli

    print("$ bench " + " ".join(args), flush=True)
    try:
        cli.main(list(args), prog_name="bench", standalone_mode=False)
    except click.ClickException as exc:
        sys.exit(f"Error: {exc.format_message()}")
    except click.Abort:  # Ctrl-C: the run is resumed by the same command
        sys.exit("Aborted!")


def dataset_args(spec: str, out: Path) -> tuple[Path, list[str]]:
    """``embedded[:cats]`` / ``photos[:cats]`` / ``ROOT[:cats]`` → the dataset's root and the ``bench run``
    arguments (writes the photos tree when missing)."""
    where, _, categories = spec.partition(":")
    args = ["--categories", categories] if categories else []
    if where == "embedded":
        return out / "data" / "synthetic", args  # bench.embedded.embedded_root
    if where == "photos":
        root = out / "data" / "photos"
        if not (root / "photos.json").is_file():
            bench("data", "photos", "--root", str(root))
        return root, ["--data-root", str(root), *args]
    return Path(where), ["--data-root", where, *args]


def finished_run(out: Path, params: dict[str, str]) -> str | None:
    """The id of a finished run in ``out``'s store whose logged parameters include ``params``, or None.

    ``bench run`` repeats a finished run when asked again (it resumes only unfinished ones), so the
    script skips what is done: rerunning it after an interruption loses nothing and redoes nothing.
    """
    if not (out / "mlflow.db").is_file():
        return None
    from bench.tracking import open_store

    for run in open_store(out).parents().itertuples():
        if run.status == "FINISHED" and all(run.params.get(k) == v for k, v in params.items()):
            return run.run_id
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    parser.add_argument("--data", action="append", help="embedded | photos | ROOT, optionally :cat1,cat2 (repeatable; default: embedded and photos)")
    parser.add_argument("--refiners", default=DEFAULT_REFINERS, help=f"refiners run side by side (default {DEFAULT_REFINERS})")
    parser.add_argument("--methods", default="musc", help="ZSAD method(s) (default musc)")
    parser.add_argument("--out", type=Path, default=Path("results/ard-ablation"), help="results folder: its own MLflow store")
    parser.add_argument("--protocol-set", action="append", default=[], metavar="KEY=VALUE", help="a --set for every run")
    parser.add_argument("--table-only", action="store_true", help="only print the tables of the store")
    opts = parser.parse_args()
    if not opts.table_only:
        for spec in opts.data or ["embedded", "photos"]:
            root, data = dataset_args(spec, opts.out)
            for seed in opts.seeds.split(","):
                sets = [a for kv in opts.protocol_set for a in ("--set", kv)]
                logged = {"seed": seed.strip(), "methods": opts.methods, "refiners": opts.refiners,
                          "data_root": str(root.resolve()), **dict(kv.split("=", 1) for kv in opts.protocol_set)}
                if done := finished_run(opts.out, logged):
                    print(f"$ # {spec} seed {seed.strip()}: finished run {done} is in the store; not repeated", flush=True)
                    continue
                bench("run", "--out", str(opts.out), "--methods", opts.methods, "--refiners", opts.refiners,
                      "--seed", seed.strip(), "--quiet", *data, *sets)
    for kind in ("decoders", "gains"):  # one block per dataset: category means, then every category's gains
        bench("table", "--out", str(opts.out), "--runs", "all", "--kind", kind)


if __name__ == "__main__":
    main()
