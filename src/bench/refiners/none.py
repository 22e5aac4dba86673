"""The baseline every table compares with: the coarse map, bilinearly upsampled."""
from __future__ import annotations

import torch

from bench.interfaces import Refiner
from bench.ops import upsample
from bench.records import FeatureSet
from bench.registry import REFINERS


class NoRefiner(Refiner):
    """Bilinear upsampling of the coarse map (no training), as the scoring method's official code does."""

    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        return upsample(coarse, tuple(images.shape[-2:]), align_corners=self.align_corners)


@REFINERS.register("none", "baseline: the coarse map, bilinearly upsampled (no training)")
def create_none(**_: object) -> NoRefiner:
    return NoRefiner()
