"""The ``synthetic`` dataset: the folder loader on a tree written by the embedded generator.

The generator itself is core code (``bench.embedded``); its names are re-exported here so that
``bench.datasets.synthetic.generate`` keeps working.
"""
from __future__ import annotations

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

from ._generated import GeneratedDataset


@DATASETS.register("synthetic", "embedded procedural dataset (6 categories), made by bench.embedded.generate")
class SyntheticDataset(GeneratedDataset):
    """The folder loader on a tree written by ``generate``, recognised by its ``synthetic.json``."""

    name = "synthetic"
    marker = staticmethod(read_marker)
