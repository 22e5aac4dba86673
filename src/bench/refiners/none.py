"""The baseline every table compares with: the coarse map, bilinearly upsampled."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.interfaces import Refiner
from bench.records import FeatureSet
from bench.registry import REFINERS


def upsample(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` → ``(B, *size)`` by bilinear interpolation."""
    return F.interpolate(coarse[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


class NoRefiner(Refiner):
    """Bilinear upsampling of the coarse map (no training)."""

    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        return upsample(coarse, tuple(images.shape[-2:]))


@REFINERS.register("none", "baseline: the coarse map, bilinearly upsampled (no training)")
def create_none(**_: object) -> NoRefiner:
    return NoRefiner()
