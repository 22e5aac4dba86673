"""DeSTSeg's segmentation network as a PGT refiner decoder (docs/design.md, "Refiners and the decoder comparison").

Zhang et al., "DeSTSeg: Segmentation Guided Denoising Student-Teacher for Anomaly Detection",
CVPR 2023; official code apple/ml-destseg (``model/destseg.py``: ``SegmentationNet``,
``model/model_utils.py``: ``BasicBlock``, ``make_layer``, ``ASPP``; ``model/losses.py``;
``train.py``). Our own code, following those layers:

    input x (B, ΣC+1, h, w) ──► res: ``res_blocks`` ResNet BasicBlocks (3×3 conv, norm, ReLU, 3×3
                                conv, norm, + identity — a 1×1 conv + norm projection when the
                                width changes — ReLU), (ΣC+1) → ``width`` (official: 2 blocks,
                                448 → 256; Kaiming-normal fan-out init of their convs, as there)
                         ──► ASPP(width → width): [global average pool → 1×1 conv, norm, ReLU,
                                broadcast back] ∥ [3×3 conv with dilation r, norm, ReLU for r in
                                ``dilations`` = (6, 12, 18)] → concat → 3×3 conv, norm, ReLU
                         ──► 3×3 conv (width → width), norm, ReLU ──► 1×1 conv → 1 logit
                         ──► bilinear to (H, W); ``refine`` returns σ(logit).

Loss, as in DeSTSeg's segmentation stage: focal loss with γ = 4 (no α) + L1, both on the
probability σ(logit), means over pixels: ``focal_weight``·focal + ``l1_weight``·|σ(logit) − mask|.

Adaptation to this harness (the input). DeSTSeg's segmentation network reads 448 channels of
teacher/student feature similarity (−t·s of L2-normalised ResNet-18 features of three stages,
resized to the stride-4 grid); a denoising student is trained first. Here there is no student:
the input is every FeatureSet layer of the frozen backbone resized (bilinear, anti-aliased when
it shrinks) to the coarse map's grid, concatenated, plus the normalised coarse anomaly map as one
extra channel — the same tensors ARD receives (``bench/refiners/_trainable.py``), so that only the
decoder differs. The image itself is not an input (DeSTSeg's segmentation network never sees it).

Other deviations from the official code, all for a like-for-like comparison inside PGT:
- training budget and optimiser are the shared ones (Adam, lr 1e-3, 80 steps of 8 images per
  group) instead of SGD (momentum 0.9, weight decay 1e-4, lr 0.1 for ``res`` and 0.01 for the
  head, batch 32, 4,000 segmentation steps);
- the network runs at the coarse grid (stride 14–16 of the backbone) instead of stride 4: on a
  16×16 grid the off-centre taps of the dilation-18 branch fall in the zero padding (that branch
  acts as a 1×1 conv) and dilation 12 sees only part of the map; ``dilations`` is an option;
- the loss is computed at image resolution on the bilinearly upsampled logit, with the masks as
  given (official: on the 64×64 output, masks bilinearly downsampled and binarised at 0.5); the
  logit, not the probability, is upsampled, so ``refine`` is σ(upsampled logit);
- focal + L1 use ``binary_cross_entropy_with_logits`` (the same value as the official
  ``binary_cross_entropy`` on σ(logit), without its log clamp at −100);
- ``norm`` can replace BatchNorm (the default, as there) by GroupNorm or nothing. With BatchNorm,
  a ``fit`` needs at least 2 images: the global-pooling branch of ASPP normalises one value per
  image and channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.records import RefineBatch
from bench.refiners._blocks import check_norm, conv_norm_relu, focal_loss_from_logits, make_norm
from bench.refiners._trainable import TrainableRefiner, TrainOptions
from bench.registry import REFINERS


@dataclass
class DeSTSegOptions(TrainOptions):
    """Options of the DeSTSeg decoder; every default is the one used unless a run config overrides it.

    Architecture (official values unless noted)
        width: 256 — channels of the residual stage, ASPP and head.
        res_blocks: 2 — ResNet BasicBlocks before the head.
        dilations: (6, 12, 18) — ASPP's atrous rates (besides its global-pooling branch).
        norm: "batch" — "batch" (BatchNorm, as DeSTSeg), "group" (GroupNorm, 8 groups) or "none".

    Coarse-map input and training budget (``use_anomaly_map``, ``coarse_norm``, ``norm_quantile``,
    ``coarse_clip``, ``steps`` 80, ``batch_size`` 8, ``lr`` 1e-3, ``weight_decay`` 0.0,
    ``refine_batch_size`` 16): shared by every trained decoder, see
    :class:`bench.refiners._trainable.TrainOptions`.

    Loss
        focal_gamma: 4.0 — DeSTSeg's focal γ.  focal_alpha: None — no class weighting (as there).
        focal_weight: 1.0, l1_weight: 1.0 — loss = focal_weight·focal + l1_weight·L1.
    """

    width: int = 256
    res_blocks: int = 2
    dilations: tuple[int, ...] = (6, 12, 18)
    norm: str = "batch"
    focal_gamma: float = 4.0
    focal_alpha: float | None = None
    focal_weight: float = 1.0
    l1_weight: float = 1.0

    def __post_init__(self) -> None:
        self.dilations = tuple(int(d) for d in self.dilations)
        if self.width < 1 or self.res_blocks < 1:
            raise ValueError(f"width and res_blocks must be >= 1, got {self.width}, {self.res_blocks}")
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be positive integers, got {self.dilations}")
        super().__post_init__()
        check_norm(self.norm)


# --------------------------------------------------------------------------------------------
# the network


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3-norm-ReLU-conv3×3-norm + identity (projected if needed), ReLU."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, cout)
        self.project = None
        if cin != cout:
            self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=bias), make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        identity = x if self.project is None else self.project(x)
        return F.relu(out + identity)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a global-pooling branch and one dilated 3×3 branch per rate."""

    def __init__(self, cin: int, cout: int, dilations: tuple[int, ...], norm: str) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_norm_relu(cin, cout, 1, norm))
        self.branches = nn.ModuleList(conv_norm_relu(cin, cout, 3, norm, dilation=d) for d in dilations)
        self.fuse = conv_norm_relu((1 + len(dilations)) * cout, cout, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])  # bilinear from 1×1 = broadcast
        return self.fuse(torch.cat([pooled, *(b(x) for b in self.branches)], 1))


class DeSTSegNet(nn.Module):
    """DeSTSeg's segmentation network on [features, coarse map]: ``forward(x, size) -> logits (B,1,*size)``."""

    def __init__(self, in_channels: int, opts: DeSTSegOptions) -> None:
        super().__init__()
        w, n = opts.width, opts.norm
        self.res = nn.Sequential(*(BasicBlock(in_channels if i == 0 else w, w, n) for i in range(opts.res_blocks)))
        for m in self.res.modules():  # as the official code: Kaiming init of the residual stage only
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.head = nn.Sequential(
            ASPP(w, w, opts.dilations, n),
            conv_norm_relu(w, w, 3, n),
            nn.Conv2d(w, 1, 1),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(self.res(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# the refiner


def destseg_loss(logits: torch.Tensor, masks: torch.Tensor, gamma: float = 4.0, alpha: float | None = None,
                 focal_weight: float = 1.0, l1_weight: float = 1.0) -> torch.Tensor:
    """DeSTSeg's segmentation loss: focal(γ) + L1 on σ(logits), means over pixels."""
    l1 = (torch.sigmoid(logits) - masks).abs().mean()
    return focal_weight * focal_loss_from_logits(logits, masks, gamma, alpha) + l1_weight * l1


class DeSTSegRefiner(TrainableRefiner):
    """DeSTSeg's segmentation network (residual blocks + ASPP head) on [features, coarse map], trained by PGT."""

    options_class = DeSTSegOptions
    display_name = "DeSTSeg"
    opts: DeSTSegOptions

    def build(self, in_channels: int) -> DeSTSegNet:
        return DeSTSegNet(in_channels + 1, self.opts)

    def forward(self, images: torch.Tensor, features: torch.Tensor, coarse_normalised: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, coarse_normalised], 1), tuple(images.shape[-2:]))

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        o = self.opts
        return destseg_loss(logits, masks, o.focal_gamma, o.focal_alpha, o.focal_weight, o.l1_weight)

    def fit(self, batch: RefineBatch) -> list[float]:
        if self.opts.norm == "batch" and self.opts.steps > 0 and batch.images.shape[0] == 1:
            raise ValueError(
                "DeSTSeg with norm='batch' needs at least 2 training images per fit (BatchNorm after "
                "ASPP's global pooling sees one value per image); got 1 — use norm='group'"
            )
        return super().fit(batch)


@REFINERS.register("destseg", "DeSTSeg's segmentation network (residual blocks + ASPP 6/12/18), trained by PGT")
def make_destseg(channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu", **options: object) -> DeSTSegRefiner:
    """DeSTSeg decoder; options: see :class:`DeSTSegOptions`."""
    return DeSTSegRefiner(channels, image_size, seed=seed, device=device, **options)
