"""The contracts every plugin implements (docs/design.md, "Contracts").

A dataset, backbone, method or refiner is one file that subclasses one of these and registers
its factory in ``bench.registry``; the protocol only talks to these interfaces.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

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
    resample: str = "bilinear"  # how the stream builder resizes images to input_size ("bilinear" | "bicubic")

    def identity(self) -> dict[str, object]:
        """Everything that determines the features of a given image, for the feature cache.

        The default reads the usual attributes: ``name``, ``input_size``, ``layers`` (or the
        layer names), ``weights`` and ``weights_path``/``weights_file`` (a file is replaced by the
        hash of its content in the cache key), ``precision``. A backbone with other options that
        change its features must override this and add them.
        """
        layers = getattr(self, "layers", None) or tuple(self.channels)
        path = getattr(self, "weights_file", None) or getattr(self, "weights_path", None)
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "name": self.name,
            "input_size": int(self.input_size),
            "layers": [str(layer) for layer in layers],
            "weights": str(getattr(self, "weights", "")),
            "weights_file": str(path) if path is not None else None,
            "precision": str(getattr(self, "precision", "fp32")),
            "resample": self.resample,
        }

    @abstractmethod
    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """H×W×3 uint8 images → ``(B, 3, input_size, input_size)`` normalised float tensor."""

    @abstractmethod
    def features(self, x: torch.Tensor) -> FeatureSet:
        """Multi-layer patch maps and a global embedding of a preprocessed batch (no grad)."""

    @property
    @abstractmethod
    def channels(self) -> dict[str, int]:
        """Channel count of each patch-feature layer of the FeatureSet (what refiners read)."""

    @property
    def extra_channels(self) -> dict[str, int]:
        """Further FeatureSet layers a method asked for (its ``BackboneExtra`` outputs, e.g. WinCLIP's
        window embeddings).

        They travel and are cached with the patch features but are not offered to refiners.
        Default: none.
        """
        return {}


class BackboneExtra(ABC):
    """An extra output a method asks its backbone to compute in the backbone's own pass.

    The method-side hook for what the plain features lack (WinCLIP's window embeddings, AnomalyCLIP's
    V-V attention path, AdaCLIP's prompted forward): the class lives in the method's package and the
    method names it in its backbone options, ``{"extras": {ExtraClass: {option: value}}}``. A
    backbone that supports extras (``OpenClipBackbone``) creates ``ExtraClass(backbone, **options)``
    once, runs ``compute`` under its inference mode and autocast on every batch it embeds, adds the
    returned layers to the FeatureSet (``Backbone.extra_channels``: cached with the features, not
    offered to refiners) and puts ``{name: identity()}`` into its cache identity. The core never
    names an extra, so a new one is a file in its method's package.
    """

    name: ClassVar[str]  # its key in the backbone's ``extras`` and cache identity; unique per backbone
    channels: dict[str, int]  # the FeatureSet layers ``compute`` returns, each ``(B, C, h, w)``

    @abstractmethod
    def identity(self) -> dict[str, object]:
        """Everything that determines the extra's output besides the backbone (JSON-able): its cache key."""

    @abstractmethod
    def compute(self, x: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed ``(B, 3, S, S)`` batch on the backbone's device, and the global embedding of the
        backbone's own pass (unnormalised) → the extra layers, so that an extra that needs the
        embedding runs no second forward."""


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
    # Backbone factory options the method needs, per backbone registry name, e.g. MuSc:
    # {"ViT-L-14-336": {"layers": ("block6", "block12", "block18", "block24"), "input_size": 518}}.
    # A backbone that is not listed is created with its own defaults (the method must work with
    # whatever backbone the user picks). Read through ``Method.backbone_options``.
    backbone_options: dict[str, dict[str, object]] = field(default_factory=dict)
    # False: the method can only score the dataset's own test images (``external`` reads their
    # maps from files), so PGT cannot score synthetic training images and trainable refiners
    # are refused with a clear error before anything runs.
    scores_unseen_images: bool = True
    # How this method's grid maps reach pixels: bilinear upsampling with this ``align_corners``.
    # True where the official code upsamples so (MuSc: grid point i lands on pixel i·(S-1)/(g-1));
    # the protocol and the training-free refiners (``none``, ``gaussian``, ``guided``) follow it.
    # A method whose official map is more than that upsampling returns it too (``ScoreOutput.evaluated``).
    align_corners: bool = False


class Method(ABC):
    """A zero-shot anomaly detector on frozen features.

    Life cycle in a run: the Runner creates the method, asks ``backbone_options(name)`` for the
    options of the backbone it will use, creates (or reuses) that backbone with them, calls
    ``bind(backbone)`` once, then calls ``score`` as often as the protocol needs.
    """

    info: MethodInfo

    def backbone_options(self, backbone: str) -> dict[str, object]:
        """Factory options for backbone ``backbone`` (registry name); {} = the backbone's defaults.

        Default: ``info.backbone_options.get(backbone, {})``. Override for rules over whole
        backbone families. The Runner merges the user's ``--weights`` and ``--device`` on top.
        """
        return dict(self.info.backbone_options.get(backbone, {}))

    def bind(self, backbone: Backbone) -> None:
        """Called once by the Runner with the backbone the method will score features of.

        Default: nothing. CLIP methods encode their text prompts here with the backbone's text
        tower (``backbone.encode_text``); ``external`` takes its map size from it.
        """

    def input_files(self) -> list[Path]:
        """Files the method reads besides the dataset (e.g. maps made elsewhere). They are part of
        the dataset fingerprint, so a run is not resumed on blocks computed from other files.
        Default: none."""
        return []

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
    # True: the baseline; in every group its maps are the coarse maps as the method's official code
    # evaluates them (``ScoreOutput.evaluated``, else the upsampled grid map), so the protocol never
    # calls its ``refine``. Trainable refiners keep the same maps in group 1.
    keeps_coarse: bool = False
    align_corners: bool = False  # how coarse maps are upsampled to pixels (set by ``bind``)

    def bind(self, method: MethodInfo) -> None:
        """Called by the protocol with the scoring method's info before any ``fit``/``refine``.

        Default: upsample coarse maps as the method's official code does (``method.align_corners``).
        """
        self.align_corners = bool(method.align_corners)

    def fit(self, batch: RefineBatch) -> list[float]:
        """Train on one group's synthetic data; returns the loss curve (empty if not trainable)."""
        return []

    @abstractmethod
    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        """``(B,3,H,W)`` images, their features and ``(B,h,w)`` coarse maps → ``(B,H,W)`` maps."""

    def num_parameters(self) -> int:
        return 0
