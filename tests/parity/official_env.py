"""What the fixture scripts need to import official code unchanged in this environment."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path


def import_script(checkout: Path, filename: str, name: str) -> types.ModuleType:
    """Import ``checkout/filename`` under ``name`` (its own folder first on ``sys.path``, as when run there).

    ``pkg_resources`` is provided when setuptools is absent: official code imports
    ``pkg_resources.packaging`` (for a torch version check) and nothing else from it.
    """
    import packaging.version

    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))
    sys.path.insert(0, str(checkout))
    spec = importlib.util.spec_from_file_location(name, checkout / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_args(doc: str, name: str, commit: str) -> argparse.Namespace:
    """A fixture script's command line: the official checkout, ``--out`` (``fixtures/<name>.npz``), ``--commit``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="the official repository's checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fixtures" / f"{name}.npz")
    parser.add_argument("--commit", default=commit, help="the checkout's commit, recorded in the fixture")
    args = parser.parse_args()
    args.checkout = args.checkout.resolve()
    return args
