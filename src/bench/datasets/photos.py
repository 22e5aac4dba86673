"""The real-photograph evaluation set written by ``bench.photos.generate`` (``bench data photos``)."""
from __future__ import annotations

from bench.photos import read_marker
from bench.registry import DATASETS

from ._generated import GeneratedDataset


@DATASETS.register("photos", "real photographs from scikit-image with generated defects (bench data photos)")
class PhotosDataset(GeneratedDataset):
    """A tree written by ``bench.photos.generate``, recognised by its ``photos.json``."""

    name = "photos"
    marker = staticmethod(read_marker)
