"""The real-photograph evaluation set written by ``bench.photos.generate`` (``bench data photos``)."""
from __future__ import annotations

from pathlib import Path

from bench.photos import read_marker
from bench.registry import DATASETS

from .folder import FolderDataset

DETECT_SCORE = 1000  # the tree says what wrote it: above every layout guess


@DATASETS.register("photos", "real photographs from scikit-image with generated defects (bench data photos)")
class PhotosDataset(FolderDataset):
    """The folder loader on a tree written by ``bench.photos.generate`` (masks for every anomalous image)."""

    name = "photos"
    masks_required = True

    @classmethod
    def detect(cls, root: Path) -> int:
        """Highest of all loaders when ``<root>/photos.json`` was written by ``bench.photos``."""
        return DETECT_SCORE if read_marker(Path(root)) is not None else 0

    @property
    def info(self) -> dict:
        return read_marker(self.root) or {}
