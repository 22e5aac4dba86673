"""What every command shares: one-line errors, deprecated spellings, the readers' store options."""
from __future__ import annotations

import errno
from functools import wraps
from pathlib import Path

import click

from bench.errors import BenchError

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a full or read-only disk, wherever it is hit


OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")  # torch's CPU and CUDA allocators


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


def store_selection(out: Path, tracking_uri: str | None, experiment: str, runs: str):
    from bench.identity import select
    from bench.tracking import open_store

    store = open_store(out, tracking_uri, experiment, create=False)  # a reader: creates nothing
    selection = select(store, runs, replicates=True)
    for note in selection.notes:
        click.echo(f"Warning: {note}", err=True)
    return store, selection
