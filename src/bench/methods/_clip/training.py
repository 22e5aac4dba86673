"""One training run of a learned CLIP method on an auxiliary dataset: what every method's ``train`` shares.

Each ``train.py`` keeps only its own loss, optimiser and step; :func:`start_training` does the
preamble once (the method's type, the auxiliary data, the official settings for that dataset, the
ranges, binding, the seeded generator) and :class:`Training` the loop and the bookkeeping after it
(provenance, settings, ``save``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.errors import ConfigError
from bench.interfaces import Backbone, Dataset
from bench.methods._clip.auxiliary import (
    AuxiliaryBatch,
    AuxiliaryData,
    check_training,
    fit_on_auxiliary,
    official_setting,
    training_meta,
)
from bench.methods._learned import LearnedMethod


@dataclass
class Training:
    """The resolved settings of one run and the method's bound learned module."""

    method: LearnedMethod
    module: nn.Module
    data: AuxiliaryData
    size: int  # the backbone's input size: masks and mosaics
    epochs: int
    lr: float
    batch_size: int
    mosaic_rate: float | None  # None: the method makes no mosaics (rate 0, not recorded)
    seed: int
    rng: np.random.Generator  # seeded by ``seed``: the order, the mosaics (and what else the method draws)
    max_steps: int | None
    progress: bool

    def fit(self, modules: Sequence[nn.Module], optimizer: torch.optim.Optimizer,
            step_loss: Callable[[AuxiliaryBatch], torch.Tensor], desc: str) -> list[float]:
        """``fit_on_auxiliary`` with this run's settings; the loss of every step."""
        return fit_on_auxiliary(modules, optimizer, self.data, step_loss, epochs=self.epochs,
                                batch_size=self.batch_size, size=self.size, mosaic_rate=self.mosaic_rate or 0.0,
                                rng=self.rng, max_steps=self.max_steps, progress=self.progress, desc=desc)

    def record(self, losses: Sequence[float], save: str | Path | None, **settings: object) -> Path | None:
        """The method's provenance and settings say how it was trained (this run's settings, then ``settings``,
        then the seed); ``save`` writes the result. Returns the saved path."""
        mosaics = {} if self.mosaic_rate is None else {"mosaic_rate": self.mosaic_rate}
        meta = training_meta(self.data, losses, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                             **mosaics, **settings, seed=self.seed)
        return self.method.record_training(meta, save)


def start_training(
    method: object,
    kind: type[LearnedMethod],
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None,
    *,
    epochs: int | None,
    lr: float | None,
    batch_size: int,
    seed: int,
    max_steps: int | None,
    progress: bool,
    mosaic_rate: float | None = None,
    official: Mapping[str, Mapping[str, object]] | None = None,
) -> Training:
    """Check and resolve a ``kind`` method's training arguments, open ``dataset`` and bind ``method`` to ``backbone``.

    The arguments every learned method's ``train`` takes, and means the same:
    method: its current parameters are the starting point (create it with ``checkpoint="untrained"``
    to train from scratch, as the official code does); it is bound to ``backbone`` first when it is
    not already, and after training it scores with the new parameters.
    dataset: a bench Dataset or a dataset root (``bench.data.open_dataset``); the field's convention:
    parameters trained on VisA for testing on MVTec AD, and the reverse.
    categories: the categories trained on (default: all, shuffled together).
    save (``Training.record``): write the trained parameters there (``method.save``), loadable with
    ``checkpoint=PATH``. max_steps: stop after this many optimiser steps (None: all epochs).
    progress: a progress bar.

    official: per option (``epochs``, ``lr``, ``mosaic_rate``) the official value per auxiliary dataset
    name, used when the argument is None (``bench.methods._clip.auxiliary.official_setting``; a
    ``mosaic_rate`` without one is 0). A method without ``official["mosaic_rate"]`` makes no mosaics.
    Every error is a ConfigError naming ``<name> train`` and the option, raised before binding.
    """
    trainer = f"{kind.name} train"
    if not isinstance(method, kind):
        raise ConfigError(f"{trainer}: trains a {kind.__name__} method, got {type(method).__name__}")
    official = official or {}
    data = AuxiliaryData.open(dataset, categories)

    def resolved(option: str, value: object) -> object:
        table = official.get(option)
        if table is None:
            return value
        return official_setting(value, table, data, trainer, option, 0.0 if option == "mosaic_rate" else None)

    n_epochs, learning_rate = resolved("epochs", epochs), resolved("lr", lr)
    rate = None if "mosaic_rate" not in official else float(resolved("mosaic_rate", mosaic_rate))
    check_training(trainer, n_epochs, batch_size, learning_rate, rate or 0.0, max_steps)
    module = method.bound_to(backbone)
    return Training(method, module, data, int(backbone.input_size), epochs=int(n_epochs), lr=float(learning_rate),
                    batch_size=int(batch_size), mosaic_rate=rate, seed=int(seed), rng=np.random.default_rng(int(seed)),
                    max_steps=max_steps, progress=progress)
