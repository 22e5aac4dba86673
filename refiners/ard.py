"""ARD — the Anomaly Refinement Decoder of AnoRefiner (arXiv 2511.22595), our reading of it.

The official code is not released; DESIGN.md section 4 lists what the paper states and what we
decide. The parts the paper fixes are marked *paper*; the rest is ours, each part an option of
:class:`ARDOptions` with its default documented there.

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
    head:     logits = 1×1 conv [f, s] → 1, bilinear → (H,W); ``refine`` returns σ(logits).

(CGR = conv, GroupNorm, ReLU.) Any grid/image ratio works (ViT 37 at 518 px, CNN 16 at 256 px):
every skip and every anomaly map is resized to the size it is fused at.

Training (``fit``): Adam, loss = ``focal_weight``·focal(γ) + ``dice_weight``·dice on the masks
at image resolution, ``steps`` optimiser steps on mini-batches drawn without replacement (a new
seeded permutation per pass). Weights, optimiser state, the mini-batch generator and the stored
coarse-map normalisation carry over from one ``fit`` to the next (PGT).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.interfaces import Refiner
from bench.records import FeatureSet, RefineBatch
from bench.registry import REFINERS

COARSE_NORMS = ("robust", "batch", "minmax", "none")
NORMS = ("group", "batch", "none")


@dataclass
class ARDOptions:
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

    Coarse-map normalisation (the same at ``fit`` and ``refine`` time)
        coarse_norm: "robust" — A' = (A − loc) / scale, with loc = median and scale =
            q(``norm_quantile``) − median of all coarse values of the training groups; estimated
            at each ``fit`` and kept as a running mean over the fits so far (equal weight per
            fit), then used unchanged by ``refine``. Before any fit, ``refine`` falls back to the
            input's own statistics. Other modes: "batch" (same statistics, always from the
            current input: the training group at fit, each ``refine`` call's input at refine),
            "minmax" (per image, to [0,1]: loses the level across images) and "none" (raw).
        norm_quantile: 0.99 — upper quantile of the "robust"/"batch" scale.
        coarse_clip: 10.0 — normalised maps are clamped to [−clip, clip] (None: no clamp).

    Training
        steps: 80 — optimiser steps per ``fit`` call (one PGT group).
        batch_size: 8 — mini-batch size (the whole group if it is smaller).
        lr: 1e-3 — Adam learning rate.  weight_decay: 0.0 — Adam weight decay.
        focal_gamma: 2.0 — focal-loss focusing parameter.
        focal_alpha: None — focal-loss weight of the positive class (None: unweighted).
        focal_weight: 1.0, dice_weight: 1.0 — loss = focal_weight·focal + dice_weight·dice; dice
            is computed over the whole mini-batch (soft dice, smoothing 1), so that normal images
            with empty masks are well defined.
        refine_batch_size: 16 — images per forward pass in ``refine``.
    """

    stem_anomaly_channels: int = 64
    stem_channels: int = 256
    ar_channels: tuple[int, int] = (128, 64)
    encoder_channels: tuple[int, int, int] = (16, 32, 64)
    attention_channels: int = 16
    bi_score_channels: int = 8
    norm: str = "group"
    use_anomaly_map: bool = True
    coarse_norm: str = "robust"
    norm_quantile: float = 0.99
    coarse_clip: float | None = 10.0
    steps: int = 80
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    refine_batch_size: int = 16

    def __post_init__(self) -> None:
        self.ar_channels = tuple(int(c) for c in self.ar_channels)  # type: ignore[assignment]
        self.encoder_channels = tuple(int(c) for c in self.encoder_channels)  # type: ignore[assignment]
        if len(self.ar_channels) != 2:
            raise ValueError(f"ar_channels must give the widths of the 2 AR blocks, got {self.ar_channels}")
        if len(self.encoder_channels) != 3:
            raise ValueError(f"encoder_channels must give 3 widths, got {self.encoder_channels}")
        if self.coarse_norm not in COARSE_NORMS:
            raise ValueError(f"coarse_norm must be one of {COARSE_NORMS}, got {self.coarse_norm!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not 0.5 < self.norm_quantile < 1.0:
            raise ValueError(f"norm_quantile must lie in (0.5, 1), got {self.norm_quantile}")
        if self.steps < 0 or self.batch_size < 1 or self.refine_batch_size < 1:
            raise ValueError("steps must be >= 0, batch_size and refine_batch_size >= 1")


# --------------------------------------------------------------------------------------------
# building blocks


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _cnr(cin: int, cout: int, k: int, norm: str, stride: int = 1) -> nn.Sequential:
    """conv (no bias when normalised) → norm → ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=norm == "none"),
        _norm(norm, cout),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _resize_input(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize of a non-trainable input; anti-aliased when it shrinks (a finer layer to the grid)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


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
        self.conv = _cnr(cin, cout, 3, norm)
        self.fuse = _cnr(cout + skip, cout, 1, norm)

    def forward(self, x: torch.Tensor, a: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, _resize(a, x.shape[-2:]))
        x = self.conv(x)
        size = (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, _resize(skip, size)], 1))


class BIBlock(nn.Module):
    """Bidirectional perception and interaction of a feature stream and an anomaly-score stream."""

    def __init__(self, channels: int, score_channels: int, norm: str) -> None:
        super().__init__()
        self.score_init = nn.Conv2d(1, score_channels, 1)
        self.modulate = nn.Conv2d(score_channels, channels, 3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=norm == "none"),
            _norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=norm == "none"),
            _norm(norm, channels),
        )
        self.score_update = nn.Conv2d(channels + score_channels, score_channels, 1)

    def forward(self, f: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.score_init(_resize(a, f.shape[-2:]))
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
        self.stem_fuse = _cnr(in_channels + opts.stem_anomaly_channels, c0, 1, n)
        self.encoder = nn.ModuleList([_cnr(3, e1, 3, n, stride=2), _cnr(e1, e2, 3, n, stride=2), _cnr(e2, e3, 3, n, stride=2)])
        self.ar1 = ARBlock(c0, c1, e3, opts.attention_channels, n)
        self.ar2 = ARBlock(c1, c2, e2, opts.attention_channels, n)
        self.bi = BIBlock(c2, opts.bi_score_channels, n)
        self.head = nn.Conv2d(c2 + opts.bi_score_channels, 1, 1)

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
# losses


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """Binary focal loss on logits, mean over pixels."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - pt).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice over the whole mini-batch (defined when every mask is empty)."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + target.sum() + smooth)


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile of a flattened tensor by sorting (no size limit; a strided subsample above 4M)."""
    x = x.detach().flatten().float()
    if x.numel() > 4_000_000:
        x = x[:: x.numel() // 4_000_000 + 1]
    x = x.sort().values
    pos = q * (x.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, x.numel() - 1)
    return x[lo] + (x[hi] - x[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------
# the refiner


class ARDRefiner(Refiner):
    """AnoRefiner's ARD: anomaly-aware refinement blocks + bidirectional interaction, trained by PGT."""

    trainable = True

    def __init__(self, channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu", **options: object) -> None:
        known = {f.name for f in dataclasses.fields(ARDOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown ARD option(s) {unknown}; known: {sorted(known)}")
        if not channels:
            raise ValueError("ARD needs at least one feature layer")
        self.opts = ARDOptions(**options)  # type: ignore[arg-type]
        self.channels = dict(channels)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = ARDNet(sum(self.channels.values()), self.opts).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.opts.lr, weight_decay=self.opts.weight_decay)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._order: list[int] = []  # remaining indices of the current pass over a group
        self._loc_sum = 0.0
        self._scale_sum = 0.0
        self._fits = 0  # fits that contributed to the stored normalisation

    # ---- inputs ---------------------------------------------------------------------------

    def fuse_features(self, features: FeatureSet, size: tuple[int, int]) -> torch.Tensor:
        """Every named layer resized (bilinear) to the coarse grid, concatenated in ``channels`` order."""
        parts = []
        for name, c in self.channels.items():
            if name not in features.layers:
                raise KeyError(f"ARD expects feature layer {name!r}; the FeatureSet has {sorted(features.layers)}")
            t = features.layers[name]
            if t.shape[1] != c:
                raise ValueError(f"feature layer {name!r} has {t.shape[1]} channels, ARD was built for {c}")
            parts.append(_resize_input(t.to(self.device, torch.float32), size))
        return torch.cat(parts, 1)

    @property
    def stored_normalisation(self) -> tuple[float, float] | None:
        """(loc, scale) of the "robust" mode, or None before the first fit."""
        if self._fits == 0:
            return None
        return self._loc_sum / self._fits, self._scale_sum / self._fits

    def _robust_stats(self, coarse: torch.Tensor) -> tuple[float, float]:
        loc = _quantile(coarse, 0.5)
        scale = _quantile(coarse, self.opts.norm_quantile) - loc
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
        bs = min(self.opts.batch_size, n)
        if len(self._order) < bs:
            self._order = torch.randperm(n, generator=self.generator).tolist()
        idx, self._order = self._order[:bs], self._order[bs:]
        return torch.tensor(idx)

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        o = self.opts
        return o.focal_weight * focal_loss(logits, masks, o.focal_gamma, o.focal_alpha) + o.dice_weight * dice_loss(logits, masks)

    def fit(self, batch: RefineBatch) -> list[float]:
        n = batch.images.shape[0]
        if n == 0 or self.opts.steps == 0:
            return []
        if batch.masks.shape[-2:] != batch.images.shape[-2:]:
            raise ValueError(f"masks {tuple(batch.masks.shape)} do not match images {tuple(batch.images.shape)}")
        coarse = batch.coarse.detach()
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
            logits = self.net(images[idx], fused[idx], anomaly[idx])
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
        stats = self._stats_for_refine(coarse)
        out = []
        bs = self.opts.refine_batch_size
        for start in range(0, images.shape[0], bs):
            sl = slice(start, start + bs)
            c = coarse[sl]
            logits = self.net(
                images[sl].to(self.device, torch.float32),
                self.fuse_features(features.select(sl), tuple(c.shape[-2:])),
                self.normalise(c, stats),
            )
            out.append(torch.sigmoid(logits[:, 0]).to(images.device))
        if not out:
            return torch.zeros((0, *images.shape[-2:]), device=images.device)
        return torch.cat(out)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)


@REFINERS.register("ard", "AnoRefiner's Anomaly Refinement Decoder (AR blocks + BI block), trained by PGT")
def make_ard(channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu", **options: object) -> ARDRefiner:
    """ARD refiner; options: see :class:`ARDOptions`."""
    return ARDRefiner(channels, image_size, seed=seed, device=device, **options)
