"""Shared fakes: a tiny backbone, method and refiner speaking the real contracts, so the core can be
tested with random inputs and no real model; and a tiny open_clip ViT for the CLIP tests."""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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




class FakeClip(Backbone):
    """A 'CLIP' for pinning the CLIP methods' formulas by hand: the tests give the method its
    features (no image tower), and the text tower maps a sentence holding one of ``abnormal`` to
    ``(0, 1, 0, …)``, any other to ``(1, 0, 0, …)`` (``embedding_dim`` long), recording the
    sentences and the ``normalize`` option it was asked for."""

    name = "fake-clip"
    input_size = 8
    mean = std = (0.5, 0.5, 0.5)
    abnormal: Sequence[str] = ()

    def __init__(self, channels: dict[str, int] | None = None, extra_channels: dict[str, int] | None = None,
                 embedding_dim: int = 2) -> None:
        self._channels = dict(channels or {})
        self._extra = dict(extra_channels or {})
        self.embedding_dim = embedding_dim
        self.seen: list[str] = []
        self.normalize: set[bool] = set()

    @property
    def channels(self):
        return dict(self._channels)

    @property
    def extra_channels(self):
        return dict(self._extra)

    def preprocess(self, images):  # pragma: no cover - not used
        raise NotImplementedError

    def features(self, x):  # pragma: no cover - not used
        raise NotImplementedError

    def encode_text(self, prompts, normalize=True):
        self.seen.extend(prompts)
        self.normalize.add(normalize)
        rows = torch.zeros(len(prompts), self.embedding_dim)
        for row, prompt in zip(rows, prompts):
            row[1 if any(m in prompt for m in self.abnormal) else 0] = 1.0
        return rows


class RandomTextEncoder:
    """``encode(sentences)`` → ``(N, 5)``: one fixed random vector of random norm per sentence, kept in ``table``."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.table: dict[str, torch.Tensor] = {}

    def __call__(self, sentences: list[str]) -> torch.Tensor:
        for s in sentences:
            self.table.setdefault(s, torch.randn(5, generator=self.generator) * 3)
        return torch.stack([self.table[s] for s in sentences])


@contextmanager
def registered_tiny_vit(
    name: str, *, embed_dim: int = 32, width: int = 64, layers: int = 4, text_width: int = 32, text_heads: int = 2,
    text_layers: int = 1,
) -> Iterator[str]:
    """A tiny ViT-CLIP (32 px, 8 px patches: a 4×4 grid; heads of width ``width // 2``) in open_clip's
    architecture registry while the context lasts, so that random-weight backbones build in milliseconds.
    Yields ``name``."""
    import open_clip
    from open_clip import factory

    config = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": layers, "width": width, "patch_size": 8, "head_width": width // 2},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": text_width, "heads": text_heads,
                     "layers": text_layers},
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
        try:
            yield name
        finally:
            factory._MODEL_CONFIG_PATHS.remove(path)
            factory._MODEL_CONFIGS.pop(name, None)
