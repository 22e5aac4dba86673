"""Training on an auxiliary dataset: its data (another dataset's test images and masks), the
segmentation losses on probabilities and the training loop.

APRIL-GAN, AnomalyCLIP, VCP-CLIP and AdaCLIP all train a few parameters (adapters, prompts) on an
*auxiliary* dataset, the field's convention being VisA for testing on MVTec AD and the reverse,
with a focal + dice loss on the pixel masks, in one loop (``fit_on_auxiliary``) to which each
method's ``train`` brings its loss, its optimiser and its official settings (through
``bench.methods._clip.training``). Where the parameters come from and how they are saved:
``bench.methods._learned``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench.errors import ConfigError, DatasetError
from bench.interfaces import Dataset
from bench.records import Sample

FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5
DICE_SMOOTH = 1.0

T = TypeVar("T")


# --------------------------------------------------------------------------- losses


def focal_loss_from_probs(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The field's focal loss on probabilities ``(B, 2, H, W)`` and a ``{0, 1}`` target ``(B, H, W)``.

    One-hot target clamped to ``[smooth, 1 - smooth]``, ``p_t = Σ onehot·p + smooth``,
    ``mean(-(1 - p_t)^γ log p_t)`` with γ = 2, smooth = 1e-5, no class weights (APRIL-GAN's and
    AnomalyCLIP's ``loss.py``).
    """
    onehot = torch.stack([1 - target, target], dim=1).float().clamp(FOCAL_SMOOTH, 1 - FOCAL_SMOOTH)
    pt = (onehot * probs).sum(dim=1) + FOCAL_SMOOTH
    return (-(1 - pt).pow(FOCAL_GAMMA) * pt.log()).mean()


def dice_loss_from_probs(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary dice loss: ``1 - mean_b (2 Σ p t + 1) / (Σ p + Σ t + 1)``."""
    p = prob.flatten(1)
    t = target.flatten(1).float()
    dice = (2 * (p * t).sum(1) + DICE_SMOOTH) / (p.sum(1) + t.sum(1) + DICE_SMOOTH)
    return 1 - dice.mean()


# --------------------------------------------------------------------------- auxiliary data


def read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image and bool mask of a sample, read afresh (not cached on the Sample: datasets are big)."""
    from bench.imageio import read_image, read_mask

    image = read_image(sample.path)
    if sample.mask_path is not None:
        mask = read_mask(sample.mask_path, image.shape[:2], strict=sample.mask_strict)
    elif sample.label == 0:
        mask = np.zeros(image.shape[:2], dtype=bool)
    else:
        raise DatasetError(f"{sample.path}: anomalous training image without a mask (training needs masks)")
    return image, mask


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """The field's target transform: 0/255 mask resized bilinearly to ``size``², then > 0.5."""
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0 > 0.5).float()


def _resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BICUBIC))


def mosaic(pool: dict[str, list[Sample]], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """2×2 mosaic of random test images of one category (a random defect type, then a random
    image): image, mask and label, anomalous (1) if any of its tiles is."""
    defects = sorted(pool)
    picked = []
    for _ in range(4):
        samples = pool[defects[int(rng.integers(len(defects)))]]
        picked.append(samples[int(rng.integers(len(samples)))])
    tiles = [read_pair(s) for s in picked]
    shape = tiles[0][0].shape[:2]
    images = [_resize_image(img, shape) for img, _ in tiles]
    masks = [m if m.shape == shape else np.asarray(Image.fromarray(m).resize((shape[1], shape[0]), Image.NEAREST))
             for _, m in tiles]
    image = np.concatenate([np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)], axis=0)
    mask = np.concatenate([np.concatenate(masks[:2], axis=1), np.concatenate(masks[2:], axis=1)], axis=0)
    return image, mask, max(int(s.label) for s in picked)


@dataclass
class AuxiliaryBatch:
    images: list[np.ndarray]  # H×W×3 uint8, as read (the backbone preprocesses them)
    masks: torch.Tensor  # (B, size, size) float {0, 1}
    labels: torch.Tensor  # (B,) long: Sample.label; a mosaic is anomalous if any of its tiles is
    categories: list[str]


@dataclass
class AuxiliaryData:
    """An auxiliary dataset's test images with masks, all categories together, for training."""

    dataset: Dataset
    categories: list[str]
    samples: list[Sample]
    pools: dict[str, dict[str, list[Sample]]]  # category → defect type → samples (for mosaics)

    @classmethod
    def open(cls, dataset: Dataset | str | Path, categories: Sequence[str] | None = None) -> AuxiliaryData:
        """Every test sample of ``categories`` (default all); each category must have masks."""
        if isinstance(dataset, (str, Path)):
            from bench.data import open_dataset

            dataset = open_dataset(Path(dataset))
        cats = list(categories) if categories is not None else list(dataset.categories())
        samples: list[Sample] = []
        pools: dict[str, dict[str, list[Sample]]] = {}
        for category in cats:
            if not dataset.category_has_masks(category):
                raise DatasetError(f"{dataset.root}: category {category!r} has no masks; training needs masks")
            found = dataset.test(category)
            samples.extend(found)
            for s in found:
                pools.setdefault(category, {}).setdefault(s.defect, []).append(s)
        if not samples:
            raise DatasetError(f"{dataset.root}: no test images to train on in {', '.join(cats) or 'no category'}")
        return cls(dataset, cats, samples, pools)

    @property
    def name(self) -> str:
        return str(getattr(self.dataset, "name", "")).lower()

    def batches(self, batch_size: int, size: int, mosaic_rate: float, rng: np.random.Generator) -> Iterator[AuxiliaryBatch]:
        """One epoch in a random order; each sample is replaced by a mosaic with ``mosaic_rate``."""
        order = rng.permutation(len(self.samples))
        for start in range(0, len(self.samples), int(batch_size)):
            images, masks, labels, categories = [], [], [], []
            for i in order[start : start + int(batch_size)]:
                s = self.samples[i]
                if mosaic_rate > 0 and rng.random() < mosaic_rate:
                    image, mask, label = mosaic(self.pools[s.category], rng)
                else:
                    (image, mask), label = read_pair(s), int(s.label)
                images.append(image)
                masks.append(resize_mask(mask, size))
                labels.append(label)
                categories.append(s.category)
            yield AuxiliaryBatch(images, torch.stack(masks), torch.tensor(labels, dtype=torch.long), categories)

    def meta(self) -> dict[str, object]:
        """Provenance recorded with trained parameters."""
        return {"dataset": self.name, "dataset_root": str(getattr(self.dataset, "root", "")),
                "categories": self.categories, "n_images": len(self.samples)}


# --------------------------------------------------------------------------- the training loop


def official_setting(value: T | None, official: Mapping[str, T], data: AuxiliaryData, trainer: str, option: str,
                     otherwise: T | None = None) -> T:
    """``value``, or when None the official one for the auxiliary dataset (``official``: dataset name →
    value), else ``otherwise``; a ConfigError asking for ``option`` when there is none."""
    if value is not None:
        return value
    if data.name in official:
        return official[data.name]
    if otherwise is not None:
        return otherwise
    raise ConfigError(f"{trainer}: no official {option} for dataset {data.name or '?'!r} (official: {dict(official)}); "
                      f"pass {option}=")


def check_training(trainer: str, epochs: int, batch_size: int, lr: float, mosaic_rate: float = 0.0,
                   max_steps: int | None = None) -> None:
    """A ConfigError naming the first training argument out of range."""
    checks = (
        ("epochs", epochs, ">= 1", int(epochs) >= 1),
        ("batch_size", batch_size, ">= 1", int(batch_size) >= 1),
        ("lr", lr, "> 0", float(lr) > 0),
        ("mosaic_rate", mosaic_rate, "in [0, 1]", 0.0 <= float(mosaic_rate) <= 1.0),
        ("max_steps", max_steps, ">= 1 or None", max_steps is None or int(max_steps) >= 1),
    )
    for name, value, rule, ok in checks:
        if not ok:
            raise ConfigError(f"{trainer} {name} must be {rule}, got {value}")


def fit_on_auxiliary(
    modules: Sequence[nn.Module],
    optimizer: torch.optim.Optimizer,
    data: AuxiliaryData,
    step_loss: Callable[[AuxiliaryBatch], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    size: int,
    mosaic_rate: float,
    rng: np.random.Generator,
    max_steps: int | None = None,
    progress: bool = False,
    desc: str = "training",
) -> list[float]:
    """Train ``modules`` on ``data``: an ``optimizer`` step on ``step_loss(batch)`` per batch, for
    ``epochs`` epochs or ``max_steps`` steps, whichever ends first. Returns the loss of every step.

    Batches of ``batch_size`` with masks at ``size``², in an order (and mosaics, at ``mosaic_rate``)
    drawn from ``rng``. The modules train with gradients inside the loop and are frozen (eval, no
    gradients) after it, also when it fails.
    """
    steps = int(epochs) * math.ceil(len(data.samples) / int(batch_size))
    total = steps if max_steps is None else min(int(max_steps), steps)
    batches = (batch for _ in range(int(epochs)) for batch in data.batches(int(batch_size), size, mosaic_rate, rng))
    losses: list[float] = []
    from tqdm.auto import tqdm

    for module in modules:
        module.train().requires_grad_(True)
    try:
        with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
            for batch in itertools.islice(batches, total):
                loss = step_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        for module in modules:
            module.eval().requires_grad_(False)
    return losses


def training_meta(data: AuxiliaryData, losses: Sequence[float], **settings: object) -> dict[str, object]:
    """Provenance of trained parameters: the auxiliary data, the training ``settings``, the steps
    taken and the final loss."""
    return {**data.meta(), **settings, "steps": len(losses), "final_loss": losses[-1] if losses else None}
