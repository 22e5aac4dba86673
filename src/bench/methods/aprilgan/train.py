"""Training APRIL-GAN's adapters on an auxiliary dataset, following the official ``train.py`` / ``train.sh``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bench.interfaces import Backbone, Dataset
from bench.methods._clip.auxiliary import AuxiliaryBatch, dice_loss_from_probs, focal_loss_from_probs
from bench.methods._clip.training import start_training
from bench.methods.aprilgan.model import layer_logits
from bench.ops import upsample

TRAIN_LR = 1e-3
TRAIN_BETAS = (0.5, 0.999)
TRAIN_BATCH_SIZE = 8  # train.sh passes --batch_size 8 (train.py's own default is 16)
TRAIN_SEED = 111
OFFICIAL_EPOCHS = {"visa": 15, "mvtec": 3}  # epochs when training on that auxiliary dataset
OFFICIAL_MOSAIC_RATE = {"mvtec": 0.2}  # aug_rate: 2x2 mosaics, only when training on MVTec AD
TRAINING = (
    f"focal + dice summed over layers; Adam lr {TRAIN_LR} betas {TRAIN_BETAS}, batch {TRAIN_BATCH_SIZE}, seed "
    f"{TRAIN_SEED}; epochs 15 on VisA / 3 on MVTec AD (mosaic rate 0.2); on the auxiliary dataset's test images"
)


def train(
    method,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int | None = None,
    lr: float = TRAIN_LR,
    batch_size: int = TRAIN_BATCH_SIZE,
    mosaic_rate: float | None = None,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train an APRIL-GAN method's adapters on an auxiliary dataset's test images and masks (official ``train.py``).

    epochs: None = official for the dataset (15 on VisA, 3 on MVTec AD; required otherwise).
    lr, batch_size, seed: official 1e-3, 8 (train.sh), 111 (Adam with betas (0.5, 0.999)).
    mosaic_rate: probability of replacing a sample by a 2x2 mosaic of its category; None =
    official (0.2 on MVTec AD, 0 otherwise).
    The other arguments (method, backbone, dataset, categories, save, max_steps, progress): as every
    learned method's ``train`` (``bench.methods._clip.training``). Returns the loss of every step.
    """
    from bench.methods.aprilgan import APRILGAN

    run = start_training(method, APRILGAN, backbone, dataset, categories, epochs=epochs, lr=lr, batch_size=batch_size,
                         seed=seed, max_steps=max_steps, progress=progress, mosaic_rate=mosaic_rate,
                         official={"epochs": OFFICIAL_EPOCHS, "mosaic_rate": OFFICIAL_MOSAIC_RATE})
    adapters, size, device = run.module, run.size, method.device

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        gt = batch.masks.to(device)
        feats = backbone.features(backbone.preprocess(batch.images))
        text = torch.stack([method.text(method.prompts.object_for(c)) for c in batch.categories])  # (B, D, 2)
        loss = torch.zeros((), device=device)
        for layer in adapters.layers:
            logits = layer_logits(adapters, layer, feats.layers[layer].to(device, torch.float32), text)
            probs = upsample(logits, (size, size), align_corners=True).softmax(dim=1)
            loss = loss + focal_loss_from_probs(probs, gt) + dice_loss_from_probs(probs[:, 1], gt)
        return loss

    optimizer = torch.optim.Adam(adapters.parameters(), lr=run.lr, betas=TRAIN_BETAS)
    losses = run.fit([adapters], optimizer, step_loss, desc="aprilgan adapters")
    run.record(losses, save)
    return losses
