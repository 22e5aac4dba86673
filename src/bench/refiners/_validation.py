"""PGT self-validation, the same for every trained decoder (option ``validation_fraction``; off by default).

Why: on some groups the synthetic training data teaches a decoder to suppress real defects
(issue 15); the coarse map is then the better output, and a refiner should not ship that update.
With self-validation a fit holds back part of the group's synthetic anomalous images, trains on the
rest, and keeps its update only if the refined maps beat the coarse maps (bilinearly upsampled, as
``none`` gives them) in pixel AP on the held-out images. A rejected update restores the refiner's
state from before the fit (weights, optimiser state, stored coarse-map normalisation); until some
update has been kept, ``refine`` returns the coarse map.

The held-out images are drawn with ``numpy.random.default_rng([seed, fit index])``: refiners built
with the same seed hold out the same images of the same group, so the protocol is identical across
decoders. It is protocol, not a decoder's choice: it lives here, next to the shared fit loop.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from bench.records import RefineBatch

if TYPE_CHECKING:
    from bench.refiners._trainable import TrainableRefiner

STORED = ("_loc_sum", "_scale_sum", "_fits")  # the refiner's stored normalisation, restored with the weights


def split_held_out(masks: torch.Tensor, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions into a ``(B,H,W)`` mask batch.

    ``fraction`` of the images with a non-empty mask are held out (rounded; at least one, and at
    least one left for training, when there are two or more); every other image trains.
    """
    anomalous = np.flatnonzero(masks.flatten(1).any(1).cpu().numpy())
    k = min(max(int(round(fraction * len(anomalous))), 1), len(anomalous) - 1) if len(anomalous) >= 2 else 0
    held = np.sort(rng.choice(anomalous, size=k, replace=False)) if k else np.array([], dtype=int)
    return np.setdiff1d(np.arange(masks.shape[0]), held), held


def select(batch: RefineBatch, rows: np.ndarray) -> RefineBatch:
    index = torch.as_tensor(rows, dtype=torch.long)
    return RefineBatch(batch.images[index], batch.features.select(index), batch.coarse[index], batch.masks[index])


def pixel_ap(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Pixel AP of ``maps`` against ``masks`` over all pixels, pooled."""
    return float(average_precision_score(masks.detach().cpu().flatten().numpy() > 0.5, maps.detach().cpu().flatten().numpy()))


def validated_fit(refiner: TrainableRefiner, batch: RefineBatch) -> list[float]:
    """``refiner.fit_steps`` on the training part; the update is kept only if it beats the coarse map.

    Each call appends ``{"n_held_out", "ap_refined", "ap_coarse", "accepted"}`` to
    ``refiner.validations``. Without two anomalous images there is nothing to hold out: the fit
    trains on the whole batch and its update is kept (``n_held_out`` 0, APs NaN).
    """
    rng = np.random.default_rng([refiner.seed, len(refiner.validations)])
    train, held = split_held_out(batch.masks, refiner.opts.validation_fraction, rng)
    before = copy.deepcopy((refiner.net.state_dict(), refiner.optimizer.state_dict(), [getattr(refiner, a) for a in STORED]))
    losses = refiner.fit_steps(select(batch, train))
    record = {"n_held_out": float(len(held)), "ap_refined": float("nan"), "ap_coarse": float("nan"), "accepted": 1.0}
    previous, refiner.use_coarse = refiner.use_coarse, False
    if len(held):
        val = select(batch, held)
        refined = refiner.refine(val.images, val.features, val.coarse)
        coarse = F.interpolate(val.coarse[:, None].float(), size=refined.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        record.update(ap_refined=pixel_ap(refined, val.masks), ap_coarse=pixel_ap(coarse, val.masks))
        if not record["ap_refined"] > record["ap_coarse"]:
            weights, optimiser, stored = before
            refiner.net.load_state_dict(weights)
            refiner.optimizer.load_state_dict(optimiser)
            for name, value in zip(STORED, stored):
                setattr(refiner, name, value)
            refiner.use_coarse = previous
            record["accepted"] = 0.0
    refiner.validations.append(record)
    return losses
