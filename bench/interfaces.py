"""The contracts every plugin implements (DESIGN.md, section 3).

A dataset, backbone, method or refiner is one file that subclasses one of these and registers
its factory in ``bench.registry``; the protocol only talks to these interfaces.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.records import FeatureSet, RefineBatch, Sample, ScoreOutput


class Dataset(ABC):
    """A tree of test images per category (and normal training images for methods that need them)."""

    name: str
    has_masks: bool = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> int:
        """How specifically this loader recognises ``root``: 0 = not at all, higher = more specific."""

    @abstractmethod
    def categories(self) -> list[str]:
        """Category names, sorted."""

    @abstractmethod
    def test(self, category: str) -> list[Sample]:
        """The test images of a category (normal and anomalous), in a stable order."""

    @abstractmethod
    def train_good(self, category: str) -> list[Path]:
        """Normal training images (only methods that declare they need references use them)."""

    def category_has_masks(self, category: str) -> bool:
        """Whether pixel metrics are defined for ``category`` (a generic folder may lack masks)."""
        return self.has_masks


class Backbone(ABC):
    """A frozen feature extractor with its own preprocessing."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @abstractmethod
    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """H×W×3 uint8 images → ``(B, 3, input_size, input_size)`` normalised float tensor."""

    @abstractmethod
    def features(self, x: torch.Tensor) -> FeatureSet:
        """Multi-layer patch maps and a global embedding of a preprocessed batch (no grad)."""

    @property
    @abstractmethod
    def channels(self) -> dict[str, int]:
        """Channel count of each named layer of the FeatureSet."""


@dataclass(frozen=True)
class MethodInfo:
    name: str
    paper: str
    arxiv: str
    default_backbone: str
    needs_auxiliary_training: bool = False
    inter_image: bool = False  # scores a batch against a reference set (MuSc)
    min_images: int = 1  # smallest set the method can score
    settings: dict[str, object] = field(default_factory=dict)
    deviations: str = ""


class Method(ABC):
    """A zero-shot anomaly detector on frozen features."""

    info: MethodInfo

    @abstractmethod
    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Score a batch.

        Inter-image methods: ``reference=None`` scores the batch mutually (each image against the
        others); a given ``reference`` scores every image against all of it. Per-image methods
        ignore ``reference``.
        """


class Refiner(ABC):
    """Turns coarse patch-level maps into pixel-level maps; its state carries over between groups."""

    trainable: bool = False

    def fit(self, batch: RefineBatch) -> list[float]:
        """Train on one group's synthetic data; returns the loss curve (empty if not trainable)."""
        return []

    @abstractmethod
    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        """``(B,3,H,W)`` images, their features and ``(B,h,w)`` coarse maps → ``(B,H,W)`` maps."""

    def num_parameters(self) -> int:
        return 0
