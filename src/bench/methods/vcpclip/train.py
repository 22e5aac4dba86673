"""Training VCP-CLIP's parameters on an auxiliary dataset, following the official ``train.py`` / ``train.sh``,
with its augmentations (``utils/dataset.py``)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from bench.interfaces import Backbone, Dataset
from bench.methods._clip.auxiliary import AuxiliaryBatch, AuxiliaryData, dice_loss_from_probs, focal_loss_from_probs
from bench.methods._clip.training import start_training
from bench.methods.vcpclip.model import probabilities

TRAIN_LR = {"visa": 4e-5, "mvtec": 2e-5}  # train.sh, per auxiliary dataset
TEMPERATURE_LR = 0.01  # prompt_temp, prompt_temp_l1
TRAIN_BETAS = (0.5, 0.999)
TRAIN_BATCH_SIZE = 32
TRAIN_EPOCHS = 10
TRAIN_SEED = 333
OFFICIAL_MOSAIC_RATE = {"mvtec": 0.2}  # aug_rate: only MVTecDataset makes mosaics
TRAINING = (
    f"focal + dice per layer and branch; Adam betas {TRAIN_BETAS}, lr {TRAIN_LR} (temperatures {TEMPERATURE_LR}), "
    f"batch {TRAIN_BATCH_SIZE}, {TRAIN_EPOCHS} epochs, seed {TRAIN_SEED}; augmentations, mosaics 0.2 on MVTec AD"
)


def _color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """albumentations' ColorJitter defaults: brightness, contrast, saturation ±0.2, hue ±0.2, random order."""
    from torchvision.transforms import functional as TF

    steps = [(TF.adjust_brightness, rng.uniform(0.8, 1.2)), (TF.adjust_contrast, rng.uniform(0.8, 1.2)),
             (TF.adjust_saturation, rng.uniform(0.8, 1.2)), (TF.adjust_hue, rng.uniform(-0.2, 0.2))]
    pil = Image.fromarray(image)
    for i in rng.permutation(len(steps)):
        adjust, factor = steps[i]
        pil = adjust(pil, float(factor))
    return np.asarray(pil)


def _u8(image: np.ndarray) -> np.ndarray:
    """Back to uint8 after each step, as albumentations does."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The official training augmentation (module docstring) of a uint8 image and its {0, 1} mask."""
    if rng.random() < 0.5:  # Rotate(limit=30): bilinear, BORDER_REFLECT_101 (scipy "mirror"); mask nearest
        angle = rng.uniform(-30, 30)
        image = _u8(ndimage.rotate(image.astype(np.float32), angle, axes=(1, 0), reshape=False, order=1, mode="mirror"))
        mask = ndimage.rotate(mask, angle, axes=(1, 0), reshape=False, order=0, mode="mirror")
    if rng.random() < 0.5:  # RandomRotate90
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:  # RandomBrightnessContrast(0.2, 0.2), brightness by max
        image = _u8(image * (1 + rng.uniform(-0.2, 0.2)) + 255 * rng.uniform(-0.2, 0.2))
    if rng.random() < 0.5:  # GaussNoise(var_limit=(10, 50)), per channel
        image = _u8(image + rng.normal(0.0, math.sqrt(rng.uniform(10, 50)), image.shape))
    if rng.random() < 0.5:  # OneOf(Blur(3), ColorJitter(), GaussianBlur((3, 7))), equal weights
        choice = int(rng.integers(3))
        if choice == 0:
            image = _u8(ndimage.uniform_filter(image.astype(np.float32), size=(3, 3, 1), mode="mirror"))
        elif choice == 1:
            image = _color_jitter(image, rng)
        else:
            k = int(rng.choice([3, 5, 7]))
            sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for sigma=0
            image = _u8(ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0), mode="mirror",
                                               truncate=(k // 2) / sigma))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _anomalous_pools(data: AuxiliaryData) -> AuxiliaryData:
    """Mosaic tiles as the official code draws them: uniformly among a category's anomalous images."""
    pools = {}
    for category, by_defect in data.pools.items():
        anomalous = [s for s in data.samples if s.category == category and s.label == 1]
        pools[category] = {"anomaly": anomalous} if anomalous else by_defect
    return dataclasses.replace(data, pools=pools)


def train(
    method,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int = TRAIN_EPOCHS,
    lr: float | None = None,
    batch_size: int = TRAIN_BATCH_SIZE,
    mosaic_rate: float | None = None,
    augmentation: bool = True,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train a VCP-CLIP method's parameters on an auxiliary dataset's test images and masks (official ``train.py``).

    epochs, batch_size, seed: official 10, 32, 333 (seeds the order, the augmentations and
    torch's global generator, which draws the prompt dropout).
    lr: None = official for the dataset (4e-5 on VisA, 2e-5 on MVTec AD; required otherwise); the
    temperatures always use 0.01. Adam with betas (0.5, 0.999).
    mosaic_rate: 2x2 mosaics of anomalous images; None = official (0.2 on MVTec AD, else 0).
    augmentation: the official random augmentations (module docstring).
    The other arguments (method, backbone, dataset, categories, save, max_steps, progress): as every
    learned method's ``train`` (``bench.methods._clip.training``). Returns the loss of every step.
    """
    from bench.methods.vcpclip import VCPCLIP

    run = start_training(method, VCPCLIP, backbone, dataset, categories, epochs=epochs, lr=lr, batch_size=batch_size,
                         seed=seed, max_steps=max_steps, progress=progress, mosaic_rate=mosaic_rate,
                         official={"lr": TRAIN_LR, "mosaic_rate": OFFICIAL_MOSAIC_RATE})
    if run.mosaic_rate:
        run.data = _anomalous_pools(run.data)
    params, size, rng = run.module, run.size, run.rng  # rng: the order, the mosaics and the augmentations
    torch.manual_seed(int(seed))  # the prompt dropout

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        images = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in batch.images]
        masks = batch.masks.numpy()
        if augmentation:
            images, masks = zip(*(augment(im, m, rng) for im, m in zip(images, masks)))
        gt = torch.from_numpy(np.stack(masks)).float().to(method.device)
        loss = torch.zeros((), device=method.device)
        for logits in method.logits(backbone.features(backbone.preprocess(list(images)))):
            for branch in logits:
                probs = probabilities(branch, size)
                loss = loss + focal_loss_from_probs(probs, gt) + dice_loss_from_probs(probs[:, 1], gt)
        return loss

    temperatures = [params.pre.log_scale, params.post.log_scale]
    others = [p for p in params.parameters() if all(p is not t for t in temperatures)]
    optimizer = torch.optim.Adam([{"params": others, "lr": run.lr}, {"params": temperatures, "lr": TEMPERATURE_LR}],
                                 betas=TRAIN_BETAS)
    losses = run.fit([params], optimizer, step_loss, desc="vcpclip")
    run.record(losses, save, augmentation=bool(augmentation))
    return losses
