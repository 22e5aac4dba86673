"""Training AdaCLIP's prompts and projections on an auxiliary dataset, following ``trainer.py`` / ``train.py``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bench.cache import file_digest
from bench.interfaces import Backbone, Dataset
from bench.methods._clip.auxiliary import AuxiliaryBatch, dice_loss_from_probs, focal_loss_from_probs
from bench.methods._clip.training import start_training
from bench.methods.adaclip.checkpoint import parameters_digest
from bench.methods.adaclip.model import grid_logits
from bench.ops import upsample

TRAIN_LR = 0.01
TRAIN_BETAS = (0.5, 0.999)  # AdamW, default weight decay (0.01)
TRAIN_EPOCHS = 5
TRAIN_BATCH_SIZE = 1
TRAIN_SEED = 111
OFFICIAL_MOSAIC_RATE = {"mvtec": 0.2}  # aug_rate: 2x2 mosaics, 0 for the other datasets
TRAINING = (
    f"per layer focal + row-wise dice (abnormal, normal) + focal on the image score; AdamW lr {TRAIN_LR} betas "
    f"{TRAIN_BETAS}, batch {TRAIN_BATCH_SIZE}, {TRAIN_EPOCHS} epochs, seed {TRAIN_SEED}; mosaic rate 0.2 on MVTec AD; "
    f"on the auxiliary dataset's test images"
)


def training_loss(
    logits: Sequence[torch.Tensor], image: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
    side: tuple[int, int],
) -> torch.Tensor:
    """Official ``train_one_batch``: focal on the image probabilities against the image ``labels`` ``(B,)``,
    plus, per layer, focal + dice(abnormal, mask) + dice(normal, 1 - mask) on the probabilities of the
    logits upsampled to the mask size (bilinear, ``align_corners=True``).

    The dice terms are taken per mask **row**, averaged over rows: at the official batch size 1,
    ``items['img_mask'].squeeze()`` leaves an ``(H, W)`` mask, which ``BinaryDiceLoss`` reads as H
    samples of W pixels.
    """
    loss = focal_loss_from_probs(image.softmax(dim=-1)[:, :, None, None], labels.float()[:, None, None])
    rows = masks.flatten(0, 1)  # (B·H, W)
    for layer in logits:
        probs = upsample(grid_logits(layer, side), tuple(masks.shape[-2:]), align_corners=True)
        probs = probs.softmax(dim=1)
        loss = loss + focal_loss_from_probs(probs, masks)
        loss = loss + dice_loss_from_probs(probs[:, 1].flatten(0, 1), rows)
        loss = loss + dice_loss_from_probs(probs[:, 0].flatten(0, 1), 1 - rows)
    return loss



def train(
    method,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int = TRAIN_EPOCHS,
    lr: float = TRAIN_LR,
    batch_size: int = TRAIN_BATCH_SIZE,
    mosaic_rate: float | None = None,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train AdaCLIP's prompts and projections on an auxiliary dataset's test images and masks.

    Follows ``trainer.py`` / ``train.py``: frozen CLIP; learned are the visual prompts (the
    backbone's extra), the text prompts, the patch and image projections, with gradients through
    the frozen towers; loss ``training_loss``; AdamW, lr 0.01, betas (0.5, 0.999), batch 1,
    5 epochs, seed 111; 2x2 mosaics at rate 0.2 on MVTec AD (``mosaic_rate``: None = official).
    The other arguments (method, backbone, dataset, categories, save, max_steps, progress): as every
    learned method's ``train`` (``bench.methods._clip.training``). Returns the loss of every step.
    """
    from bench.methods.adaclip import AdaCLIP

    run = start_training(method, AdaCLIP, backbone, dataset, categories, epochs=epochs, lr=lr, batch_size=batch_size,
                         seed=seed, max_steps=max_steps, progress=progress, mosaic_rate=mosaic_rate,
                         official={"mosaic_rate": OFFICIAL_MOSAIC_RATE})
    head, extra = run.module, method.extra
    side = (backbone.grid, backbone.grid)

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        x = backbone.preprocess(batch.images).to(method.device)
        logits, image = method.logits(extra.forward(x), [method.prompts.object_for(c) for c in batch.categories])
        return training_loss(logits, image, batch.masks.to(method.device), batch.labels.to(method.device), side)

    modules = (extra.prompts, head)
    optimizer = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=run.lr, betas=TRAIN_BETAS)
    losses = run.fit(modules, optimizer, step_loss, desc="adaclip prompts")
    extra.source = {"trained_sha256": parameters_digest(extra.prompts)}  # a new feature-cache identity
    saved = run.record(losses, save)
    if saved is not None:
        extra.source = {"checkpoint_sha256": file_digest(saved)}
    return losses

