"""Training AnomalyCLIP's prompts on an auxiliary dataset, following the official ``train.py`` / ``train.sh``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.interfaces import Backbone, Dataset
from bench.methods._clip.auxiliary import AuxiliaryBatch, dice_loss_from_probs, focal_loss_from_probs
from bench.methods._clip.training import start_training
from bench.methods.anomalyclip.model import class_probabilities, image_logits
from bench.ops import upsample

TRAIN_LR = 1e-3
TRAIN_BETAS = (0.5, 0.999)
TRAIN_BATCH_SIZE = 8
TRAIN_EPOCHS = 15
TRAIN_SEED = 111
SEGMENTATION_WEIGHT = 4.0  # lam
TRAINING = (
    f"{SEGMENTATION_WEIGHT:g} x (focal + dice(anomalous) + dice(normal)) summed over layers + image cross-entropy; "
    f"Adam lr {TRAIN_LR} betas {TRAIN_BETAS}, batch {TRAIN_BATCH_SIZE}, {TRAIN_EPOCHS} epochs, seed {TRAIN_SEED}; "
    f"on the auxiliary dataset's test images"
)


def training_loss(
    layer_probs: Sequence[torch.Tensor], logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The official training objective (``train.py``) of one batch.

    ``layer_probs``: per layer ``(B, 2, S, S)`` probabilities at the masks' size; ``logits``: ``(B, 2)``
    image logits; ``masks``: ``(B, S, S)`` in {0, 1}; ``labels``: ``(B,)`` image labels in {0, 1}.
    Cross-entropy of the logits against the labels + 4 · Σ_layers (focal(p, mask) + dice(p1, mask) +
    dice(p0, 1 - mask)).
    """
    segmentation = sum(
        focal_loss_from_probs(p, masks) + dice_loss_from_probs(p[:, 1], masks)
        + dice_loss_from_probs(p[:, 0], 1 - masks)
        for p in layer_probs
    )
    return F.cross_entropy(logits, labels) + SEGMENTATION_WEIGHT * segmentation



def train(
    method,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int = TRAIN_EPOCHS,
    lr: float = TRAIN_LR,
    batch_size: int = TRAIN_BATCH_SIZE,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train an AnomalyCLIP method's prompts on an auxiliary dataset's test images and masks (official ``train.py``).

    epochs, lr, batch_size, seed: official 15, 1e-3, 8, 111 (Adam, betas (0.5, 0.999)); no mosaics.
    The other arguments (method, backbone, dataset, categories, save, max_steps, progress): as every
    learned method's ``train`` (``bench.methods._clip.training``). Returns the loss of every step.
    """
    from bench.methods.anomalyclip import AnomalyCLIP

    run = start_training(method, AnomalyCLIP, backbone, dataset, categories, epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, max_steps=max_steps, progress=progress)
    prompts, size, device = run.module, run.size, method.device

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        features = backbone.features(backbone.preprocess(batch.images))
        tokens, embedding = method.projected(features)
        text = method.encode_text()
        probs = [upsample(class_probabilities(t, text), (size, size), align_corners=False) for t in tokens]
        return training_loss(probs, image_logits(embedding, text), batch.masks.to(device), batch.labels.to(device))

    optimizer = torch.optim.Adam(prompts.parameters(), lr=run.lr, betas=TRAIN_BETAS)
    method.forget_text()  # the prompts change: text() encodes them again
    losses = run.fit([prompts], optimizer, step_loss, desc="anomalyclip prompts")
    run.record(losses, save)
    return losses
