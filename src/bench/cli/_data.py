"""``bench data``: write the embedded datasets, check a dataset tree."""
from __future__ import annotations

from pathlib import Path

import click

from bench import embedded
from bench.cli._common import alias, friendly


@click.group()
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
