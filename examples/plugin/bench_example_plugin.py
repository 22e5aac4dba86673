"""A method and a refiner from outside the repository (README, "Writing a plugin").

Installed with its distribution, this module is imported through its entry points (groups
``bench.methods`` and ``bench.refiners``) and registers both on import.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.interfaces import Method, MethodInfo, Refiner
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS, REFINERS


class MedianDistance(Method):
    """Per image: each patch's distance to the image's median patch, on the first feature layer."""

    def __init__(self, layer: int = 0) -> None:
        self.layer = int(layer)
        self.info = MethodInfo(name="median_distance", paper="README example", arxiv="",
                               default_backbone="efficientnet_lite0", settings={"layer": self.layer})

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        patches = list(features.layers.values())[self.layer]  # (B, C, h, w)
        median = patches.flatten(2).median(dim=2).values[..., None, None]  # (B, C, 1, 1)
        maps = (patches - median).norm(dim=1)  # (B, h, w)
        return ScoreOutput(maps.flatten(1).max(dim=1).values, maps)


class PowerRefiner(Refiner):
    """Bilinear upsampling, then each value raised to ``power`` (sharper peaks; no training)."""

    def __init__(self, power: float = 2.0) -> None:
        if power <= 0:
            raise ValueError(f"power must be positive, got {power}")
        self.power = float(power)

    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return up.clamp_min(0) ** self.power


@METHODS.register("median_distance", "README example: distance to the image's median patch")
def make_median_distance(layer: int = 0) -> MedianDistance:
    return MedianDistance(layer)


@REFINERS.register("power", "README example: upsampled coarse map raised to a power (no training)")
def make_power(channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu",
               power: float = 2.0) -> PowerRefiner:
    return PowerRefiner(power)
