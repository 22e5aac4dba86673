"""The loader of a tree written by one of bench's generators (embedded synthetic set, real-photograph set)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

from .folder import FolderDataset

DETECT_SCORE = 1000  # the tree says what wrote it: above every layout guess


class GeneratedDataset(FolderDataset):
    """The folder loader, recognised by the marker file its generator writes last; masks for every anomalous image.

    A subclass sets ``marker``: ``staticmethod(read_marker)``, the generator's reader of its marker
    (None when the tree is not one of its own, or is incomplete).
    """

    masks_required = True
    marker: ClassVar[Callable[[Path], dict | None]]

    @classmethod
    def detect(cls, root: Path) -> int:
        """Highest of all loaders when the generator's marker is in ``root``."""
        return DETECT_SCORE if cls.marker(Path(root)) is not None else 0

    @property
    def info(self) -> dict:
        return type(self).marker(self.root) or {}
