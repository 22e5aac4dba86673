"""``bench report``: one self-contained HTML page of a benchmark, read from the MLflow store.

The page embeds everything it shows (plots as SVG, figure grids as PNG, styles and a few lines of
script), so it opens from disk with no server and no network, and survives being moved or mailed.
"""
from __future__ import annotations

import os
from pathlib import Path

from bench.errors import BenchError
from bench.identity import Selection
from bench.report.data import gather
from bench.report.page import render
from bench.storeaccess import refuse_database
from bench.tracking import Store


def check_output(output: Path) -> Path:
    """``output`` if a report can be written there, else one clear error (nothing is created)."""
    output = Path(output)
    if output.is_dir():
        raise BenchError(f"--output {output}: is a folder; give a file name such as {output / 'report.html'}")
    existing = next(folder for folder in output.absolute().parents if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise BenchError(f"--output {output}: cannot write there; choose a writable place")
    refuse_database(output)
    return output


def write_report(store: Store, selection: Selection, output: Path, where: str = "") -> Path:
    """Write the report of the runs in ``selection`` (one configuration; its latest run gives the
    figures and logs) to ``output``."""
    output = check_output(output)
    blocks = selection.blocks()
    if len(blocks) > 1:
        listed = "; ".join(f"{selection.title(config, units)}: runs {','.join(dict.fromkeys(units.parent_id))}"
                           for config, units in blocks)
        raise BenchError(f"the runs hold {len(blocks)} configurations and a report shows one: pass one's run ids "
                         f"with --runs ({listed})")
    html = render(gather(store, selection.units, where))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return output


__all__ = ["check_output", "write_report"]
