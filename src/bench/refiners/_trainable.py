"""The machinery every trained refiner decoder shares (ARD, DeSTSeg, RealNet).

The decoders are compared inside one PGT protocol with the same inputs and the same synthetic
training data, so that only the decoder differs (docs/design.md, "Refiners and the decoder
comparison"). Everything that is not the decoder lives here, once:

- option parsing: a dataclass of options per decoder, subclassing :class:`TrainOptions`
  (unknown names are rejected with the list of known ones);
- the inputs: every FeatureSet layer resized (bilinear; anti-aliased when it shrinks) to the
  coarse map's grid and concatenated in ``channels`` order (:meth:`TrainableRefiner.fuse_features`),
  and the coarse map normalised the same way at ``fit`` and ``refine`` time
  (:meth:`TrainableRefiner.normalise`, option ``coarse_norm``);
- the network built under ``torch.manual_seed(seed)`` (in a forked RNG, so the global RNG is
  untouched), Adam, and a mini-batch generator seeded with the same seed: two refiners built
  with the same seed draw the same mini-batches, in the same order, from the same group;
- the fit loop (``steps`` optimiser steps on mini-batches drawn without replacement, a new
  seeded permutation per pass over the group) and the carry-over of weights, optimiser state,
  mini-batch generator and stored normalisation from one ``fit`` (one PGT group) to the next;
- ``refine`` in eval mode without gradients, in chunks of ``refine_batch_size`` images,
  returning ``sigmoid(logits)``.

A decoder subclasses :class:`TrainableRefiner` and supplies ``options_class``, ``build`` (the
``nn.Module``), ``forward(images, features, coarse_normalised) -> logits (B,1,H,W)`` and
``loss(logits, masks)``; it may override ``output_logits`` to combine its output with the coarse
map (ARD's ``output`` option), from the building blocks of ``_blocks.py`` (norms, conv blocks, resizing,
losses on logits). Option ``validation_fraction`` turns on PGT self-validation for
every decoder alike (``bench/refiners/_validation.py``). Modules whose name starts with ``_`` are
not registered as refiners.
"""
from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from bench.config import typed_options
from bench.interfaces import Refiner
from bench.records import FeatureSet, RefineBatch
from bench.refiners._blocks import quantile, resize, resize_input
from bench.refiners._validation import validated_fit

COARSE_NORMS = ("robust", "batch", "minmax", "none")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainOptions:
    """Options every trained decoder shares; the defaults are the same for all, so the comparison is fair.

    Coarse-map input
        use_anomaly_map: True — False zeroes the normalised coarse map wherever the decoder uses
            it: the ablation that measures what the map contributes.
        coarse_norm: "robust" — A' = (A − loc) / scale, with loc = median and scale =
            q(``norm_quantile``) − median of all coarse values of the training groups; estimated
            at each ``fit`` and kept as a running mean over the fits so far (equal weight per
            fit), then used unchanged by ``refine``. Before any fit, ``refine`` falls back to the
            input's own statistics. Other modes: "batch" (same statistics, always from the
            current input: the training group at fit, each ``refine`` call's input at refine),
            "minmax" (per image, to [0,1]: loses the level across images) and "none" (raw).
        norm_quantile: 0.99 — upper quantile of the "robust"/"batch" scale.
        coarse_clip: 10.0 — normalised maps are clamped to [−clip, clip] (None: no clamp).

    Training budget (identical defaults for every decoder)
        steps: 80 — optimiser steps per ``fit`` call (one PGT group).
        batch_size: 8 — mini-batch size (the whole group if it is smaller).
        lr: 1e-3 — Adam learning rate.  weight_decay: 0.0 — Adam weight decay.
        refine_batch_size: 16 — images per forward pass in ``refine``.

    Speed (both off by default: neither is faster on the project's AVX2 CPU, see README
    "Benchmarks"; both change the float rounding, hence the trained weights, slightly)
        precision: "fp32" — "bf16" runs forward passes (training and ``refine``) under bf16
            autocast; weights, optimiser and loss stay fp32. For GPUs and CPUs with native bf16
            (AVX-512 BF16, AMX); without it bf16 is emulated and many times slower.
        channels_last: False — True puts the network and its inputs in NHWC memory layout.

    Protocol
        validation_fraction: 0.0 (off) — PGT self-validation: this fraction of a group's synthetic
            anomalous images is held out of training, and the fit's update is kept only if the
            refined maps beat the coarse maps (pixel AP) on them; otherwise the state before the
            fit comes back. Until an update is kept (before any fit too), ``refine`` returns the
            coarse map (bilinearly upsampled, as ``none``). Why: a decoder that learns to suppress
            defects on a group should not ship that update. See ``bench/refiners/_validation.py``.
    """

    use_anomaly_map: bool = True
    coarse_norm: str = "robust"
    norm_quantile: float = 0.99
    coarse_clip: float | None = 10.0
    steps: int = 80
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    refine_batch_size: int = 16
    precision: str = "fp32"
    channels_last: bool = False
    validation_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.coarse_norm not in COARSE_NORMS:
            raise ValueError(f"coarse_norm must be one of {COARSE_NORMS}, got {self.coarse_norm!r}")
        if not 0.5 < self.norm_quantile < 1.0:
            raise ValueError(f"norm_quantile must lie in (0.5, 1), got {self.norm_quantile}")
        if self.steps < 0 or self.batch_size < 1 or self.refine_batch_size < 1:
            raise ValueError("steps must be >= 0, batch_size and refine_batch_size >= 1")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")


class TrainableRefiner(Refiner):
    """A refiner with a trained decoder: shared inputs, fit loop, carry-over and chunked refine.

    Subclasses set ``options_class`` (a :class:`TrainOptions` subclass) and ``display_name`` (used
    in messages) and implement :meth:`build`, :meth:`forward` and :meth:`loss`.
    """

    trainable = True
    options_class: ClassVar[type[TrainOptions]] = TrainOptions
    display_name: ClassVar[str] = "refiner"

    def __init__(self, channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu", **options: object) -> None:
        known = {f.name for f in dataclasses.fields(self.options_class)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown {self.display_name} option(s) {unknown}; known: {sorted(known)}")
        if not channels:
            raise ValueError(f"{self.display_name} needs at least one feature layer")
        self.opts = self.options_class(**typed_options(self.options_class, options))  # type: ignore[arg-type]
        self.channels = dict(channels)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self.build(sum(self.channels.values())).to(self.device, memory_format=self._layout)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.opts.lr, weight_decay=self.opts.weight_decay)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._order: list[int] = []  # remaining indices of the current pass over a group
        self._loc_sum = 0.0
        self._scale_sum = 0.0
        self._fits = 0  # fits that contributed to the stored normalisation
        self.use_coarse = self.opts.validation_fraction > 0  # self-validation kept no update yet: refine gives the coarse map
        self.validations: list[dict[str, float]] = []  # one entry per validated fit (_validation.py)

    # ---- what a decoder supplies ------------------------------------------------------------

    @abstractmethod
    def build(self, in_channels: int) -> nn.Module:
        """The decoder network; ``in_channels`` = the summed channels of the feature layers."""

    @abstractmethod
    def forward(self, images: torch.Tensor, features: torch.Tensor, coarse_normalised: torch.Tensor) -> torch.Tensor:
        """``(B,3,H,W)`` images, ``(B,ΣC,h,w)`` fused features, ``(B,1,h,w)`` normalised map → logits ``(B,1,H,W)``."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of ``(B,1,H,W)`` logits against ``(B,1,H,W)`` masks in {0, 1}."""

    def output_logits(self, output: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """The decoder's ``forward`` output and the ``(B,h,w)`` coarse map as given → logits ``(B,1,H,W)``.

        The identity by default (the decoder's map replaces the coarse one).
        """
        return output

    # ---- speed ------------------------------------------------------------------------------

    @property
    def _layout(self) -> torch.memory_format:
        return torch.channels_last if self.opts.channels_last else torch.contiguous_format

    def _autocast(self):
        """bf16 autocast of the forward pass (option ``precision``), or nothing."""
        enabled = self.opts.precision == "bf16"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _forward(self, images: torch.Tensor, features: torch.Tensor, anomaly: torch.Tensor) -> torch.Tensor:
        """``forward`` in the configured layout and precision; float32 logits."""
        layout = self._layout
        with self._autocast():
            logits = self.forward(images.contiguous(memory_format=layout), features.contiguous(memory_format=layout),
                                  anomaly.contiguous(memory_format=layout))
        return logits.float()

    # ---- inputs ---------------------------------------------------------------------------

    def fuse_features(self, features: FeatureSet, size: tuple[int, int]) -> torch.Tensor:
        """Every named layer resized (bilinear) to the coarse grid, concatenated in ``channels`` order."""
        parts = []
        for name, c in self.channels.items():
            if name not in features.layers:
                raise KeyError(
                    f"{self.display_name} expects feature layer {name!r}; the FeatureSet has {sorted(features.layers)}"
                )
            t = features.layers[name]
            if t.shape[1] != c:
                raise ValueError(f"feature layer {name!r} has {t.shape[1]} channels, {self.display_name} was built for {c}")
            parts.append(resize_input(t.to(self.device, torch.float32), size))
        return torch.cat(parts, 1)

    @property
    def stored_normalisation(self) -> tuple[float, float] | None:
        """(loc, scale) of the "robust" mode, or None before the first fit."""
        if self._fits == 0:
            return None
        return self._loc_sum / self._fits, self._scale_sum / self._fits

    def _robust_stats(self, coarse: torch.Tensor) -> tuple[float, float]:
        loc = quantile(coarse, 0.5)
        scale = quantile(coarse, self.opts.norm_quantile) - loc
        if not torch.isfinite(scale) or float(scale) <= 1e-12:
            scale = coarse.float().std() if coarse.numel() > 1 else torch.tensor(1.0)
            if not torch.isfinite(scale) or float(scale) <= 1e-12:
                scale = torch.tensor(1.0)
        return float(loc), float(scale)

    def normalise(self, coarse: torch.Tensor, stats: tuple[float, float] | None = None) -> torch.Tensor:
        """``(B,h,w)`` coarse scores → ``(B,1,h,w)`` normalised map (zeros when the map is ablated)."""
        a = coarse.to(self.device, torch.float32).unsqueeze(1)
        if not self.opts.use_anomaly_map:
            return torch.zeros_like(a)
        mode = self.opts.coarse_norm
        if mode in ("robust", "batch"):
            loc, scale = stats if stats is not None else self._robust_stats(a)
            a = (a - loc) / scale
        elif mode == "minmax":
            lo = a.amin(dim=(2, 3), keepdim=True)
            hi = a.amax(dim=(2, 3), keepdim=True)
            a = (a - lo) / (hi - lo).clamp_min(1e-12)
        if self.opts.coarse_clip is not None:
            a = a.clamp(-self.opts.coarse_clip, self.opts.coarse_clip)
        return a

    def _stats_for_refine(self, coarse: torch.Tensor) -> tuple[float, float] | None:
        if self.opts.coarse_norm == "robust" and self._fits > 0:
            return self.stored_normalisation
        if self.opts.coarse_norm in ("robust", "batch"):
            return self._robust_stats(coarse)
        return None

    # ---- training -------------------------------------------------------------------------

    def _next_batch(self, n: int) -> torch.Tensor:
        """Indices of the next mini-batch: without replacement, a new seeded permutation per pass."""
        bs = min(self.opts.batch_size, n)
        if len(self._order) < bs:
            self._order = torch.randperm(n, generator=self.generator).tolist()
        idx, self._order = self._order[:bs], self._order[bs:]
        return torch.tensor(idx)

    def fit(self, batch: RefineBatch) -> list[float]:
        if self.opts.validation_fraction > 0:
            return validated_fit(self, batch)
        return self.fit_steps(batch)

    def fit_steps(self, batch: RefineBatch) -> list[float]:
        """``steps`` optimiser steps on ``batch`` (one PGT group), without self-validation."""
        n = batch.images.shape[0]
        if n == 0 or self.opts.steps == 0:
            return []
        if batch.masks.shape[-2:] != batch.images.shape[-2:]:
            raise ValueError(f"masks {tuple(batch.masks.shape)} do not match images {tuple(batch.images.shape)}")
        coarse = batch.coarse.detach().to(self.device)
        stats = None
        if self.opts.coarse_norm in ("robust", "batch"):
            stats = self._robust_stats(coarse)
            if self.opts.coarse_norm == "robust":
                self._loc_sum += stats[0]
                self._scale_sum += stats[1]
                self._fits += 1
                stats = self.stored_normalisation
        with torch.no_grad():
            anomaly = self.normalise(coarse, stats)
            fused = self.fuse_features(batch.features, tuple(coarse.shape[-2:]))
        images = batch.images.to(self.device, torch.float32)
        masks = batch.masks.to(self.device, torch.float32).unsqueeze(1)
        self._order = []  # a new group: start a fresh pass over it
        self.net.train()
        losses = []
        for _ in range(self.opts.steps):
            idx = self._next_batch(n).to(self.device)
            logits = self.output_logits(self._forward(images[idx], fused[idx], anomaly[idx]), coarse[idx])
            loss = self.loss(logits, masks[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        self.net.eval()
        return losses

    # ---- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        if self.use_coarse:
            return resize(coarse[:, None].float(), tuple(images.shape[-2:]))[:, 0]
        stats = self._stats_for_refine(coarse)
        out = []
        bs = self.opts.refine_batch_size
        for start in range(0, images.shape[0], bs):
            sl = slice(start, start + bs)
            c = coarse[sl]
            logits = self.output_logits(self._forward(
                images[sl].to(self.device, torch.float32),
                self.fuse_features(features.select(sl), tuple(c.shape[-2:])),
                self.normalise(c, stats),
            ), c.to(self.device))
            out.append(torch.sigmoid(logits[:, 0]).to(images.device))
        if not out:
            return torch.zeros((0, *images.shape[-2:]), device=images.device)
        return torch.cat(out)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)
