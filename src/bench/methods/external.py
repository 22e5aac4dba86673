"""``external``: coarse maps and image scores produced by any method run elsewhere, read from files.

Lets a method that is not (yet) in bench, or its official code, be refined and measured under the
same protocol: run it elsewhere, save one map per test image, then

    bench run --methods external --set method_options.external.maps_dir=/path/to/maps \\
              --data-root /data/mvtec --refiner none,gaussian,guided

Layout (the one ``bench eval`` reads, with ``bench.evaluation.read_map`` / ``read_scores``):
``<maps_dir>/<category>/test/<defect>/<image stem>.npy`` (an H×W float map, any resolution,
higher = more anomalous) and optionally ``<maps_dir>/<category>/image_scores.csv`` with columns
``image,score`` (image as ``<defect>/<stem>``). Without the CSV an image's score is the max of its
map (after the resize below), as ``bench eval`` does.

How the method knows which images it scores: the Runner's stream builder fills
``FeatureSet.keys`` (``Sample.key``, ``<defect>/<stem>``) and ``FeatureSet.category``; ``select`` and
``concat`` carry them, so every subset that the protocol scores still names its images. The
features themselves are not used.

A map has its image's aspect ratio or is square (``check_aspect``, as ``bench eval``); maps are
resized (bilinear) to ``map_size`` (default: the backbone's input size, set by
``bind``), the resolution the protocol's coarse maps and refiners work at.

Limitation, by design: PGT's synthetic training images (anomalies pasted on pseudo-normals) have
no file, so ``external`` cannot give their coarse maps, and trainable refiners (ard, destseg,
realnet) cannot be trained with it. ``info.scores_unseen_images=False`` makes the Runner refuse
that combination before anything runs; training-free refiners (none, gaussian, guided) work.
``external`` is not part of ``--methods all``: name it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import BenchError, ConfigError, first_few
from bench.evaluation import SCORES_FILE, MapScales, check_aspect, read_map, read_scores
from bench.interfaces import Backbone, Method, MethodInfo
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS


class External(Method):
    """Per-image maps and scores read from ``maps_dir`` (see the module docstring)."""

    def __init__(self, maps_dir: str | Path | None = None, map_size: int | None = None,
                 default_backbone: str = "efficientnet_lite0") -> None:
        if not maps_dir:
            raise ConfigError(
                "method 'external' needs maps_dir: --set method_options.external.maps_dir=/path/to/maps "
                "(a folder of <category>/test/<defect>/<name>.npy, as `bench eval` reads)"
            )
        self.maps_dir = Path(maps_dir).expanduser()
        if not self.maps_dir.is_dir():
            raise ConfigError(f"external maps_dir {self.maps_dir}: not a directory")
        if map_size is not None and int(map_size) < 1:
            raise ConfigError(f"external map_size must be a positive integer or None, got {map_size}")
        self.map_size = None if map_size is None else int(map_size)
        self._maps: dict[tuple[str, str], torch.Tensor] = {}  # (category, key) → (S, S), resized
        self._scores: dict[str, dict[str, float] | None] = {}  # category → CSV scores or None
        self._scales: dict[str, MapScales] = {}  # category → the value type of its maps
        self.info = MethodInfo(
            name="external",
            paper="maps produced elsewhere (any method), read from .npy files",
            arxiv="",
            default_backbone=default_backbone,
            inter_image=False,
            settings={"maps_dir": str(self.maps_dir), "map_size": self.map_size or "backbone input size",
                      "image_score": f"{SCORES_FILE} when present, else the max of the resized map"},
            deviations="",
            scores_unseen_images=False,
        )

    def bind(self, backbone: Backbone) -> None:
        if self.map_size is None:
            self.map_size = int(backbone.input_size)
            self._maps.clear()

    def input_files(self) -> list[Path]:
        """Every file under ``maps_dir``: maps made again after an interrupted run are a new run
        (resuming kept the blocks scored from the old maps: pixel AUROC 94.7 where they give 5.3)."""
        return sorted(p for p in self.maps_dir.rglob("*") if p.is_file())

    def _map(self, category: str, key: str, image_shape: tuple[int, int] | None) -> torch.Tensor:
        if (category, key) not in self._maps:
            path = self.maps_dir / category / "test" / f"{key}.npy"
            raw = torch.from_numpy(read_map(path, scales=self._scales.setdefault(category, MapScales())))
            if image_shape is not None:  # a map of another aspect ratio would be stretched onto its image
                check_aspect(raw.numpy(), image_shape, path)
            size = self.map_size or raw.shape[-1]
            if tuple(raw.shape) != (size, size):
                raw = F.interpolate(raw[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
            self._maps[(category, key)] = raw
        return self._maps[(category, key)]

    def _category_scores(self, category: str) -> dict[str, float] | None:
        if category not in self._scores:
            path = self.maps_dir / category / SCORES_FILE
            self._scores[category] = read_scores(path) if path.is_file() else None
        return self._scores[category]

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and scores of the images named by ``features.keys`` (``reference`` is ignored)."""
        if features.keys is None or features.category is None:
            raise BenchError(
                "method 'external' reads maps from files, but these images have no file (e.g. PGT's "
                "synthetic training images): 'external' supports training-free refiners only "
                "(--refiner none, gaussian, guided)."
            )
        category = features.category
        if not features.keys:
            size = self.map_size or 1
            return ScoreOutput(torch.zeros(0), torch.zeros(0, size, size))
        shapes = features.shapes or [None] * len(features.keys)
        maps = torch.stack([self._map(category, key, shape) for key, shape in zip(features.keys, shapes)])
        given = self._category_scores(category)
        if given is not None:
            missing = [k for k in features.keys if k not in given]
            if missing:
                raise BenchError(f"{self.maps_dir / category / SCORES_FILE}: no score for {first_few(missing)}")
            scores = torch.from_numpy(np.array([given[k] for k in features.keys], dtype=np.float64))
        else:
            scores = maps.flatten(1).amax(dim=1)
        return ScoreOutput(image_scores=scores, maps=maps)


@METHODS.register(
    "external",
    "maps and image scores made elsewhere, read from <maps_dir>/<category>/test/<defect>/<name>.npy "
    "(training-free refiners only; not part of --methods all)",
    in_all=False,
)
def create(maps_dir: str | None = None, map_size: int | None = None,
           default_backbone: str = "efficientnet_lite0") -> External:
    """Maps from files.

    maps_dir: folder laid out as `bench eval` reads it (required).
    map_size: side the maps are resized to (None: the backbone's input size).
    default_backbone: backbone whose features and preprocessed images the refiners get (the maps
    do not depend on it).
    """
    return External(maps_dir=maps_dir, map_size=map_size, default_backbone=default_backbone)
