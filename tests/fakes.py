"""Shared fakes: a tiny backbone, method and refiner speaking the real contracts, so the core can be
tested with random inputs and no real model."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.interfaces import Backbone, Method, MethodInfo, Refiner
from bench.records import FeatureSet, RefineBatch, ScoreOutput


class TinyBackbone(Backbone):
    name = "tiny"
    input_size = 32
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def preprocess(self, images):
        x = torch.as_tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - 0.5) / 0.5

    def features(self, x):
        return FeatureSet({"pool4": F.avg_pool2d(x, 4)}, x.mean(dim=(2, 3)))

    @property
    def channels(self):
        return {"pool4": 3}


class BrightnessMethod(Method):
    """Per-image: the patch's distance to the batch's (or reference's) mean patch colour."""

    info = MethodInfo(name="brightness", paper="test fake", arxiv="", default_backbone="tiny", inter_image=True, min_images=2)

    def score(self, features, reference=None):
        tokens = features.layers["pool4"]
        ref = (reference or features).layers["pool4"].mean(dim=(0, 2, 3))
        maps = (tokens - ref[None, :, None, None]).norm(dim=1)
        return ScoreOutput(maps.flatten(1).max(1).values, maps)


class CountingRefiner(Refiner):
    """Trainable fake: remembers what it was trained on, refines by upsampling plus a constant."""

    trainable = True

    def __init__(self):
        self.batches: list[RefineBatch] = []

    def fit(self, batch):
        self.batches.append(batch)
        return [1.0, 0.5]

    def refine(self, images, features, coarse):
        up = F.interpolate(coarse[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return up + len(self.batches)


