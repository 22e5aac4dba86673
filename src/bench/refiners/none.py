"""The baseline every table compares with: the coarse map as the method's official code evaluates it.

In a PGT run the protocol gives ``none`` that map (``Refiner.keeps_coarse``): the method's
``ScoreOutput.evaluated`` where it has one (e.g. AnomalyCLIP's upsampled and smoothed map), else the
grid map upsampled bilinearly with the method's ``align_corners``. ``refine`` does the latter alone,
for a caller without the method's output (speed benchmarks, direct use).
"""
from __future__ import annotations

import torch

from bench.interfaces import Refiner
from bench.ops import upsample
from bench.records import FeatureSet
from bench.registry import REFINERS


class NoRefiner(Refiner):
    """The coarse map as evaluated by the method's official code (no training; module docstring)."""

    keeps_coarse = True

    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        return upsample(coarse, tuple(images.shape[-2:]), align_corners=self.align_corners)


@REFINERS.register("none", "baseline: the coarse map as the method's official code evaluates it (no training)")
def create_none(**_: object) -> NoRefiner:
    return NoRefiner()
