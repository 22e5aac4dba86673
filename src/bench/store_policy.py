"""Which MLflow stores the workers of a cluster can write: a local file serves this machine only."""
from __future__ import annotations

from urllib.parse import urlparse

from bench.errors import ConfigError

LOCAL_STORE_SCHEMES = ("", "file", "sqlite")  # stores that live on this machine's disk


def require_shared_store(tracking_uri: str | None, nodes: set[str], here: str) -> None:
    """A ConfigError when the cluster has nodes besides this one but the store is a local file,
    which workers there cannot write."""
    elsewhere = sorted(nodes - {here})
    if elsewhere and urlparse(tracking_uri or "").scheme in LOCAL_STORE_SCHEMES:
        store = f"--tracking-uri {tracking_uri}" if tracking_uri else "the default store <out>/mlflow.db"
        raise ConfigError(
            f"--executor ray: the cluster has nodes other than this machine ({', '.join(elsewhere)}), and their "
            f"workers cannot write {store}; start a tracking server (`bench server --host ADDRESS`) and pass "
            "--tracking-uri http://ADDRESS:PORT"
        )
