"""What the CLIP methods with learned parts share: where their parameters come from, the auxiliary
training data (another dataset's test images and masks) and the segmentation losses.

APRIL-GAN, AnomalyCLIP, VCP-CLIP and AdaCLIP all train a few parameters (adapters, prompts) on an
*auxiliary* dataset, the field's convention being VisA for testing on MVTec AD and the reverse,
with a focal + dice loss on the pixel masks. Not a registered plugin (leading underscore).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.errors import DatasetError, WeightsError
from bench.interfaces import Backbone, Dataset
from bench.records import Sample

UNTRAINED = "untrained"
FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5
DICE_SMOOTH = 1.0


# --------------------------------------------------------------------------- learned parameters


def learned_source(spec: str | Path | None, backbone: Backbone, method: str, option: str, help_text: str) -> Path | None:
    """Where a method's learned parameters come from: a checkpoint file, or None for fresh ones.

    ``spec``: a file path, ``"untrained"`` (fresh parameters, meaningless maps: tests and smoke
    runs), or None. None is allowed only on a backbone with random weights (the user asked for a
    random smoke run with ``--weights random``); otherwise it is a ``WeightsError`` that says how
    to get the parameters (``help_text``). A path that is not a file is a ``WeightsError`` naming it.
    """
    if spec is None or str(spec).strip() == "":
        if str(getattr(backbone, "weights", "")) == "random":
            return None
        raise WeightsError(
            f"{method} needs its trained {option}: --set method_options.{method}.{option}=PATH. {help_text} "
            f"({option}=untrained gives fresh parameters: meaningless maps, for tests and smoke runs only; "
            f"with --weights random they are untrained by default.)"
        )
    if str(spec) == UNTRAINED:
        return None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"{method} {option} {path}: file not found. {help_text}")
    return path.resolve()


def load_checkpoint(path: Path, method: str, option: str) -> object:
    """``torch.load`` (weights only) of a method's checkpoint; unreadable files are WeightsErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / zip / torch errors of many types
        raise WeightsError(f"{method} {option} {path}: cannot be read by torch.load ({exc})") from None


# --------------------------------------------------------------------------- losses


def focal_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The field's focal loss on probabilities ``(B, 2, H, W)`` and a ``{0, 1}`` target ``(B, H, W)``.

    One-hot target clamped to ``[smooth, 1 - smooth]``, ``p_t = Σ onehot·p + smooth``,
    ``mean(-(1 - p_t)^γ log p_t)`` with γ = 2, smooth = 1e-5, no class weights (APRIL-GAN's and
    AnomalyCLIP's ``loss.py``).
    """
    onehot = torch.stack([1 - target, target], dim=1).float().clamp(FOCAL_SMOOTH, 1 - FOCAL_SMOOTH)
    pt = (onehot * probs).sum(dim=1) + FOCAL_SMOOTH
    return (-(1 - pt).pow(FOCAL_GAMMA) * pt.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
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


def mosaic(pool: dict[str, list[Sample]], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2×2 mosaic of random test images of one category: a random defect type, then a random image."""
    defects = sorted(pool)
    tiles = []
    for _ in range(4):
        samples = pool[defects[int(rng.integers(len(defects)))]]
        tiles.append(read_pair(samples[int(rng.integers(len(samples)))]))
    shape = tiles[0][0].shape[:2]
    images = [_resize_image(img, shape) for img, _ in tiles]
    masks = [m if m.shape == shape else np.asarray(Image.fromarray(m).resize((shape[1], shape[0]), Image.NEAREST))
             for _, m in tiles]
    image = np.concatenate([np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)], axis=0)
    mask = np.concatenate([np.concatenate(masks[:2], axis=1), np.concatenate(masks[2:], axis=1)], axis=0)
    return image, mask


@dataclass
class AuxiliaryBatch:
    images: list[np.ndarray]  # H×W×3 uint8, as read (the backbone preprocesses them)
    masks: torch.Tensor  # (B, size, size) float {0, 1}
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
            images, masks, categories = [], [], []
            for i in order[start : start + int(batch_size)]:
                s = self.samples[i]
                if mosaic_rate > 0 and rng.random() < mosaic_rate:
                    image, mask = mosaic(self.pools[s.category], rng)
                else:
                    image, mask = read_pair(s)
                images.append(image)
                masks.append(resize_mask(mask, size))
                categories.append(s.category)
            yield AuxiliaryBatch(images, torch.stack(masks), categories)

    def meta(self) -> dict[str, object]:
        """Provenance recorded with trained parameters."""
        return {"dataset": self.name, "dataset_root": str(getattr(self.dataset, "root", "")),
                "categories": self.categories, "n_images": len(self.samples)}
