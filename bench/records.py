"""The small typed records that the stages exchange (DESIGN.md, section 3).

Each stage reads and writes only these, so it can be tested alone with ``torch.randn`` inputs and
never knows which dataset, method or refiner is on the other side.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    """Frozen-backbone output for a batch: named patch maps ``(B, C, h, w)`` and a global embedding."""

    layers: dict[str, torch.Tensor]
    embedding: torch.Tensor  # (B, D)

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def select(self, index: torch.Tensor | list[int] | slice) -> "FeatureSet":
        return FeatureSet({k: v[index] for k, v in self.layers.items()}, self.embedding[index])

    @staticmethod
    def concat(parts: list["FeatureSet"]) -> "FeatureSet":
        names = parts[0].layers
        return FeatureSet(
            {k: torch.cat([p.layers[k] for p in parts]) for k in names},
            torch.cat([p.embedding for p in parts]),
        )


@dataclass
class ScoreOutput:
    """ZSAD output: one score per image and a coarse map at patch resolution."""

    image_scores: torch.Tensor  # (B,)
    maps: torch.Tensor  # (B, h, w)


@dataclass
class RefineBatch:
    """What a refiner trains on: images, their features, coarse maps and target masks."""

    images: torch.Tensor  # (B, 3, H, W) float, backbone-normalised
    features: FeatureSet
    coarse: torch.Tensor  # (B, h, w)
    masks: torch.Tensor  # (B, H, W) float in {0, 1}


@dataclass
class CategoryResult:
    """Metrics of one (dataset, method, refiner, category) unit."""

    dataset: str
    method: str
    refiner: str
    category: str
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    n_anomalous: int = 0
