"""The ``synthetic`` dataset: the folder loader on a tree written by the embedded generator.

The generator itself is core code (``bench.embedded``); its names are re-exported here so that
``bench.datasets.synthetic.generate`` keeps working.
"""
from __future__ import annotations

from pathlib import Path

from bench.embedded import (  # noqa: F401  (re-exported)
    CATEGORIES,
    DEFECTS,
    GENERATOR,
    GENERATOR_VERSION,
    MARKER,
    OBJECTS,
    STAGING,
    TEXTURES,
    generate,
    read_marker,
    render_sample,
)
from bench.registry import DATASETS

from .folder import FolderDataset

DETECT_SCORE = 1000


@DATASETS.register("synthetic", "embedded procedural dataset (6 categories), made by bench.embedded.generate")
class SyntheticDataset(FolderDataset):
    """The folder loader on a tree written by ``generate`` (masks for every anomalous image)."""

    name = "synthetic"
    masks_required = True

    @classmethod
    def detect(cls, root: Path) -> int:
        """Highest of all loaders when ``<root>/synthetic.json`` was written by ``generate``."""
        return DETECT_SCORE if read_marker(Path(root)) is not None else 0

    @property
    def info(self) -> dict:
        return read_marker(self.root) or {}
