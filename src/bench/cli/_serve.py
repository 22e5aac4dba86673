"""``bench ui`` and ``bench server``: MLflow on this machine."""
from __future__ import annotations

from pathlib import Path

import click

from bench.cli._common import friendly
from bench.errors import BenchError


@click.command()
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


@click.command()
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
