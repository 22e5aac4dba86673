"""ARD — the Anomaly Refinement Decoder of AnoRefiner (arXiv 2511.22595), our reading of it.

The official code is not released; docs/design.md ("Refiners and the decoder comparison") lists
what the paper states and what we decide. The parts the paper fixes are marked *paper*; the rest
is ours, each part an option of :class:`ARDOptions` with its default documented there.

Architecture (``h×w`` = the coarse map's grid, ``H×W`` = the image; widths are the defaults)::

    coarse A (B,h,w) ──normalise (option ``coarse_norm``)──► A (B,1,h,w)
    features: every FeatureSet layer, bilinear → (h,w), concatenated → F (B,ΣC,h,w)   *paper*
    stem:     a = ReLU(1×1 conv A → 64)                                               *paper*
              x = ReLU(GN(1×1 conv [F, a] → 256))                                     *paper*
    image encoder (trainable, on the input image):
              e1 = CGR(3→16, s2)  (H/2) ; e2 = CGR(16→32, s2) (H/4) ; e3 = CGR(32→64, s2) (H/8)
    AR block 1 (h×w → 2h×2w, 256 → 128), AR block 2 (2h×2w → 4h×4w, 128 → 64), each:
              anomaly attention: g = σ(3×3 conv(ReLU(1×1 conv [x, A↓r] → 16)) → 1)   *paper: exists*
                                 x = x + x·g            (A resized to the block's scale)
              x = CGR 3×3 (C_in → C_out)          at the block's input scale (cheap)
              x = bilinear ×2
              x = CGR 1×1 ([x, skip] → C_out)     skip = e3 (block 1) / e2 (block 2),
                                                   bilinearly resized to the block's output size
    BI block at 4h×4w (64 channels, score stream of 8 channels):                     *paper: exists*
              s  = 1×1 conv(A↓r) → 8                 score stream, initialised from the coarse map
              f  = f + f·tanh(3×3 conv s → 64)       features perceive scores (factor in (0,2):
                                                     background can be suppressed to 0)
              f  = f + GN(1×1(ReLU(GN(dw3×3 f))))    feature refinement (depthwise-separable)
              s  = s + 1×1 conv [f, s] → 8           scores perceive features
    head:     r = 1×1 conv [f, s] → 1, bilinear → (H,W); ``refine`` returns σ(logits), where
              logits = r by default (option ``output``: the refined map replaces the coarse
              one) or r combined with the coarse map C (as given, bilinear → (H,W)):
              "residual"   logits = logit(C) + r, head zero-initialised: at initialisation
                           ARD returns C, i.e. ``none``, and learns corrections around it;
              "gated"      p = g·σ(r) + (1 − g)·C with a learned per-pixel gate g = σ(second
                           head channel, zero-initialised: g = ½ at first), logits = logit(p);
              "confidence" the same with the fixed rule g = |2σ(r) − 1|: the refined map where
                           it is confident, the coarse map where it hesitates.

(CGR = conv, GroupNorm, ReLU.) Any grid/image ratio works (ViT 37 at 518 px, CNN 16 at 256 px):
every skip and every anomaly map is resized to the size it is fused at.

Training (``fit``): Adam, loss = ``focal_weight``·focal(γ) + ``dice_weight``·dice on the masks
at image resolution, ``steps`` optimiser steps on mini-batches drawn without replacement (a new
seeded permutation per pass). Weights, optimiser state, the mini-batch generator and the stored
coarse-map normalisation carry over from one ``fit`` to the next (PGT). The inputs, the
normalisation, the fit loop and ``refine`` are the ones every trained decoder shares
(``bench/refiners/_trainable.py``); this file holds only ARD's network and loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.refiners._blocks import (
    NORMS,
    check_norm,
    conv_norm_relu,
    dice_loss_from_logits,
    focal_loss_from_logits,
    make_norm,
    resize,
)
from bench.refiners._trainable import COARSE_NORMS, TrainableRefiner, TrainOptions
from bench.registry import REFINERS

__all__ = [
    "ARDOptions", "ARDNet", "ARDRefiner", "make_ard", "focal_loss_from_logits", "dice_loss_from_logits", "COARSE_NORMS",
    "NORMS", "OUTPUTS",
]

OUTPUTS = ("replace", "residual", "gated", "confidence")
EPS = 1e-6  # the coarse map is clamped to [EPS, 1 − EPS] before its logit is taken


@dataclass
class ARDOptions(TrainOptions):
    """Options of the ARD refiner; every default is the one used unless a run config overrides it.

    Architecture
        stem_anomaly_channels: 64 — channels of the coarse-map embedding in the stem (*paper*).
        stem_channels: 256 — width after fusing [F, A-embedding] (*paper*).
        ar_channels: (128, 64) — output widths of the two AR blocks.
        encoder_channels: (16, 32, 64) — the shallow image encoder (three stride-2 3×3 convs, at
            H/2, H/4, H/8); AR block 1 fuses the H/8 map, AR block 2 the H/4 map.
        attention_channels: 16 — hidden width of each anomaly-attention gate.
        bi_score_channels: 8 — channels of the BI block's anomaly-score stream.
        norm: "group" — "group" (GroupNorm, 8 groups; no train/eval gap, independent of batch
            composition), "batch" or "none".
        use_anomaly_map: True — False zeroes the coarse map at every use (stem, attention gates,
            BI score-stream initialisation): the ablation that measures what the map contributes.

    Coarse-map normalisation (``coarse_norm`` "robust", ``norm_quantile`` 0.99, ``coarse_clip``
    10.0) and the training budget (``steps`` 80, ``batch_size`` 8, ``lr`` 1e-3, ``weight_decay``
    0.0, ``refine_batch_size`` 16): shared by every trained decoder, see
    :class:`bench.refiners._trainable.TrainOptions`.

    Output (how the refined map relates to the coarse map; issue 15)
        output: "replace" — the decoder's map replaces the coarse map (the paper's reading).
            "residual": logits = logit(coarse) + the decoder's output, whose last layer is
            zero-initialised, so that ARD starts as ``none`` and learns corrections: where it
            learns nothing the coarse evidence stays instead of being pushed to ~0.
            "gated": a learned per-pixel gate blends σ(decoder) and the coarse map (the gate
            starts at ½); "confidence": the fixed rule gate = |2σ(decoder) − 1| (trust the
            decoder where it is confident). The coarse map is taken as ``refine`` receives it,
            which PGT scales to [0, 1] per category (``bench.protocol.coarse_scaler``), clamped
            to [1e-6, 1 − 1e-6]; with ``use_anomaly_map=False`` it is ½ everywhere (no map).

    Loss
        focal_gamma: 2.0 — focal-loss focusing parameter.
        focal_alpha: None — focal-loss weight of the positive class (None: unweighted).
        focal_weight: 1.0, dice_weight: 1.0 — loss = focal_weight·focal + dice_weight·dice; dice
            is computed over the whole mini-batch (soft dice, smoothing 1), so that normal images
            with empty masks are well defined.
    """

    stem_anomaly_channels: int = 64
    stem_channels: int = 256
    ar_channels: tuple[int, int] = (128, 64)
    encoder_channels: tuple[int, int, int] = (16, 32, 64)
    attention_channels: int = 16
    bi_score_channels: int = 8
    norm: str = "group"
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    output: str = "replace"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        self.ar_channels = tuple(int(c) for c in self.ar_channels)  # type: ignore[assignment]
        self.encoder_channels = tuple(int(c) for c in self.encoder_channels)  # type: ignore[assignment]
        if len(self.ar_channels) != 2:
            raise ValueError(f"ar_channels must give the widths of the 2 AR blocks, got {self.ar_channels}")
        if len(self.encoder_channels) != 3:
            raise ValueError(f"encoder_channels must give 3 widths, got {self.encoder_channels}")
        super().__post_init__()
        check_norm(self.norm)


# --------------------------------------------------------------------------------------------
# building blocks


class AnomalyAttention(nn.Module):
    """Spatial gate from [x, A at x's scale], applied residually: x + x·σ(gate)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels + 1, hidden, 1)
        self.gate = nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(F.relu(self.reduce(torch.cat([x, a], 1)))))
        return x + x * g


class ARBlock(nn.Module):
    """Anomaly-aware refinement: anomaly attention, conv, ×2 upsampling, image-skip fusion."""

    def __init__(self, cin: int, cout: int, skip: int, hidden: int, norm: str) -> None:
        super().__init__()
        self.attention = AnomalyAttention(cin, hidden)
        self.conv = conv_norm_relu(cin, cout, 3, norm)
        self.fuse = conv_norm_relu(cout + skip, cout, 1, norm)

    def forward(self, x: torch.Tensor, a: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, resize(a, x.shape[-2:]))
        x = self.conv(x)
        size = (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, resize(skip, size)], 1))


class BIBlock(nn.Module):
    """Bidirectional perception and interaction of a feature stream and an anomaly-score stream."""

    def __init__(self, channels: int, score_channels: int, norm: str) -> None:
        super().__init__()
        self.score_init = nn.Conv2d(1, score_channels, 1)
        self.modulate = nn.Conv2d(score_channels, channels, 3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=norm == "none"),
            make_norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=norm == "none"),
            make_norm(norm, channels),
        )
        self.score_update = nn.Conv2d(channels + score_channels, score_channels, 1)

    def forward(self, f: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.score_init(resize(a, f.shape[-2:]))
        f = f + f * torch.tanh(self.modulate(s))  # scores → features: suppress / enhance
        f = F.relu(f + self.refine(f))
        s = s + self.score_update(torch.cat([f, s], 1))  # features → scores
        return f, s


class ARDNet(nn.Module):
    """The decoder proper: ``forward(images, fused_features, anomaly) -> logits (B,1,H,W)``."""

    def __init__(self, in_channels: int, opts: ARDOptions) -> None:
        super().__init__()
        n = opts.norm
        e1, e2, e3 = opts.encoder_channels
        c0, (c1, c2) = opts.stem_channels, opts.ar_channels
        self.stem_anomaly = nn.Sequential(nn.Conv2d(1, opts.stem_anomaly_channels, 1), nn.ReLU(inplace=True))
        self.stem_fuse = conv_norm_relu(in_channels + opts.stem_anomaly_channels, c0, 1, n)
        self.encoder = nn.ModuleList([conv_norm_relu(3, e1, 3, n, stride=2), conv_norm_relu(e1, e2, 3, n, stride=2), conv_norm_relu(e2, e3, 3, n, stride=2)])
        self.ar1 = ARBlock(c0, c1, e3, opts.attention_channels, n)
        self.ar2 = ARBlock(c1, c2, e2, opts.attention_channels, n)
        self.bi = BIBlock(c2, opts.bi_score_channels, n)
        self.head = nn.Conv2d(c2 + opts.bi_score_channels, 2 if opts.output == "gated" else 1, 1)
        zeroed = {"residual": slice(0, 1), "gated": slice(1, 2)}.get(opts.output)
        if zeroed is not None:  # identity at initialisation (residual), gate ½ (gated)
            with torch.no_grad():
                self.head.weight[zeroed] = 0
                self.head.bias[zeroed] = 0

    def forward(self, images: torch.Tensor, fused: torch.Tensor, anomaly: torch.Tensor) -> torch.Tensor:
        skips = []
        e = images
        for layer in self.encoder:
            e = layer(e)
            skips.append(e)
        x = self.stem_fuse(torch.cat([fused, self.stem_anomaly(anomaly)], 1))
        x = self.ar1(x, anomaly, skips[2])
        x = self.ar2(x, anomaly, skips[1])
        f, s = self.bi(x, anomaly)
        logits = self.head(torch.cat([f, s], 1))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# the refiner


class ARDRefiner(TrainableRefiner):
    """AnoRefiner's ARD: anomaly-aware refinement blocks + bidirectional interaction, trained by PGT."""

    options_class = ARDOptions
    display_name = "ARD"
    opts: ARDOptions

    def build(self, in_channels: int) -> ARDNet:
        return ARDNet(in_channels, self.opts)

    def forward(self, images: torch.Tensor, features: torch.Tensor, coarse_normalised: torch.Tensor) -> torch.Tensor:
        return self.net(images, features, coarse_normalised)

    def output_logits(self, output: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Combine the decoder's output with the coarse map, as option ``output`` says."""
        mode = self.opts.output
        if mode == "replace":
            return output
        if self.opts.use_anomaly_map:
            prior = resize(coarse[:, None].float(), tuple(output.shape[-2:])).clamp(EPS, 1 - EPS)
        else:
            prior = torch.full_like(output[:, :1], 0.5)
        if mode == "residual":
            return torch.logit(prior) + output
        refined = torch.sigmoid(output[:, :1])
        gate = torch.sigmoid(output[:, 1:2]) if mode == "gated" else (2 * refined - 1).abs()
        return torch.logit((gate * refined + (1 - gate) * prior).clamp(EPS, 1 - EPS))

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        o = self.opts
        focal = focal_loss_from_logits(logits, masks, o.focal_gamma, o.focal_alpha)
        return o.focal_weight * focal + o.dice_weight * dice_loss_from_logits(logits, masks)


@REFINERS.register("ard", "AnoRefiner's Anomaly Refinement Decoder (AR blocks + BI block), trained by PGT")
def make_ard(channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu", **options: object) -> ARDRefiner:
    """ARD refiner; options: see :class:`ARDOptions`."""
    return ARDRefiner(channels, image_size, seed=seed, device=device, **options)


def _register_variant(output: str) -> None:
    """``ard_<output>``: ARD with that ``output`` preset, so that variants run side by side in one
    PGT run (same groups, same synthetic training data); not part of ``--refiners all``."""

    def make(channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu", **options: object) -> ARDRefiner:
        return ARDRefiner(channels, image_size, seed=seed, device=device, **{"output": output, **options})

    REFINERS.register(f"ard_{output}", f"ARD with output={output!r} (an ablation of issue 15; see ARDOptions)", in_all=False)(make)


for _output in OUTPUTS[1:]:
    _register_variant(_output)
