"""What the fixture scripts need to import official code unchanged in this environment."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import PIL.Image
import recipe
import torch


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


class RecipeImages(torch.utils.data.Dataset):
    """The recipe's images as the official test loops read them (one category; images 1 and 4 labelled
    anomalous, empty masks); takes and ignores the official dataset classes' other arguments."""

    def __init__(self, transform, category: str = "bottle", **_: object) -> None:
        self.transform, self.category = transform, category
        self.images = [PIL.Image.fromarray(img) for img in recipe.images()]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, object]:
        mask = torch.zeros(1, recipe.IMAGE_SIZE, recipe.IMAGE_SIZE)
        return {"img": self.transform(self.images[i]), "cls_name": self.category, "img_mask": mask,
                "anomaly": int(i in (1, 4)), "img_path": f"{self.category}/img{i}.png"}

    def get_cls_names(self) -> list[str]:
        return [self.category]


def script_args(doc: str, name: str, commit: str) -> argparse.Namespace:
    """A fixture script's command line: the official checkout, ``--out`` (``fixtures/<name>.npz``), ``--commit``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="the official repository's checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fixtures" / f"{name}.npz")
    parser.add_argument("--commit", default=commit, help="the checkout's commit, recorded in the fixture")
    args = parser.parse_args()
    args.checkout = args.checkout.resolve()
    return args
