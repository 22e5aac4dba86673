"""The small typed records that the stages exchange (docs/design.md, "Contracts").

Each stage reads and writes only these, so it can be tested alone with ``torch.randn`` inputs and
never knows which dataset, method or refiner is on the other side.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from bench.imageio import read_image, read_mask


@dataclass(eq=False)
class Sample:
    """One test image; pixels are read lazily from ``path`` (and ``mask_path``) on first use."""

    path: Path
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" for normal images
    category: str
    mask_path: Path | None = None  # None: normal, or a dataset without masks
    mask_strict: bool = True  # masks must be two-valued; False for label masks (VisA), binarised > 0

    @cached_property
    def image(self) -> np.ndarray:
        """H×W×3 uint8 RGB."""
        return read_image(self.path)

    @cached_property
    def mask(self) -> np.ndarray | None:
        """H×W bool, all False for normal images; None when the dataset has no masks."""
        if self.mask_path is not None:
            return read_mask(self.mask_path, self.image.shape[:2], strict=self.mask_strict)
        if self.label == 0:
            return np.zeros(self.image.shape[:2], dtype=bool)
        return None

    @property
    def key(self) -> str:
        """Stable identity inside a category: ``<defect>/<file stem>``."""
        return f"{self.defect}/{Path(self.path).stem}"


@dataclass
class FeatureSet:
    """Frozen-backbone output for a batch: named patch maps ``(B, C, h, w)`` and a global embedding.

    ``keys``, ``shapes`` and ``category`` say which images the rows are (``Sample.key``, i.e.
    ``<defect>/<file stem>``, the image's (height, width) as read, and the category), so that a
    method can look up per-image data that the features cannot carry (``external`` reads maps
    from files and checks their aspect ratio). The Runner's stream builder fills them for a
    category's test images; images with no file (PGT's synthetic anomalies) have ``keys=None``.
    They follow ``select`` and ``concat``; a concat of keyed and unkeyed parts has ``keys=None``.
    """

    layers: dict[str, torch.Tensor]
    embedding: torch.Tensor  # (B, D)
    keys: list[str] | None = None  # one Sample.key per row, or None (unknown / synthetic images)
    category: str | None = None
    shapes: list[tuple[int, int]] | None = None  # one image (height, width) per row, or None

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def select(self, index: torch.Tensor | list[int] | slice) -> "FeatureSet":
        return FeatureSet({k: v[index] for k, v in self.layers.items()}, self.embedding[index],
                          _rows(self.keys, index), self.category, _rows(self.shapes, index))

    @staticmethod
    def concat(parts: list["FeatureSet"]) -> "FeatureSet":
        names = parts[0].layers
        categories = {p.category for p in parts}
        return FeatureSet(
            {k: torch.cat([p.layers[k] for p in parts]) for k in names},
            torch.cat([p.embedding for p in parts]),
            _joined([p.keys for p in parts]),
            categories.pop() if len(categories) == 1 else None,
            _joined([p.shapes for p in parts]),
        )


def _rows(values: list | None, index: torch.Tensor | list[int] | slice) -> list | None:
    """The items of a per-row list at ``index`` (as tensor indexing picks rows); None stays None."""
    if values is None:
        return None
    if isinstance(index, slice):
        return values[index]
    rows = torch.as_tensor(index).reshape(-1)
    if rows.dtype == torch.bool:
        rows = rows.nonzero().reshape(-1)
    return [values[int(i)] for i in rows]


def _joined(parts: list[list | None]) -> list | None:
    """Per-row lists of concatenated parts, or None when a part has none."""
    return None if any(p is None for p in parts) else [v for p in parts for v in p]


@dataclass
class ScoreOutput:
    """ZSAD output: one score per image, a coarse map at patch resolution (what refiners consume) and,
    where the method's official evaluation is not that map upsampled, the map it evaluates."""

    image_scores: torch.Tensor  # (B,)
    maps: torch.Tensor  # (B, h, w)
    # (B, S, S) at the backbone's input size: the map the official code evaluates, where it is not the grid
    # map upsampled (bilinear, ``MethodInfo.align_corners``): e.g. a softmax taken after the upsampling, a
    # Gaussian smoothing. None: that upsampling is the official map. The protocol scores ``none`` (and the
    # coarse maps group 1 keeps) on it; refiners never see it.
    evaluated: torch.Tensor | None = None


@dataclass
class RefineBatch:
    """What a refiner trains on: images, their features, coarse maps and target masks."""

    images: torch.Tensor  # (B, 3, H, W) float, backbone-normalised
    features: FeatureSet
    coarse: torch.Tensor  # (B, h, w)
    masks: torch.Tensor  # (B, H, W) float in {0, 1}
