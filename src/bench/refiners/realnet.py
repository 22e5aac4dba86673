"""RealNet's discrimination network as a PGT refiner decoder (docs/design.md, "Refiners and the decoder comparison").

Zhang et al., "RealNet: A Feature Selection Network with Realistic Synthetic Anomaly for Anomaly
Detection", CVPR 2024; official code cnulab/RealNet. The discrimination network is the RRS
module (Reconstruction Residual Selection, ``models/rrs/rrs.py``), trained with
``SegmentCrossEntropyLoss`` (``utils/criterion_helper.py``; the only segmentation criterion of
the published ``experiments/*/realnet.yaml``, next to the reconstruction's feature MSE). Our own
code, following those layers:

    multi-scale input, every scale resized to one grid and concatenated: X (B, ΣC, h, w)
    selection (RRS): standardise X per channel with a BatchNorm without affine parameters
        (momentum 0.9, as there), rank the channels of each image by their spatial max and by their
        spatial mean, keep the top ``selection`` = (256, 256) of each ranking (sorted, duplicates
        allowed, as there) and gather those channels of the *unstandardised* X → (B, 512, h, w)
    + the normalised coarse map as one extra channel (ours, see below)
    decoder1: residual stack (``residual_layers`` = 2 × [x + 1×1 conv(ReLU(3×3 conv(ReLU(x))))],
              no biases, then ReLU), 3×3 conv → 128, norm, ReLU
    decoder2: 3×3 conv 128 → 32, ReLU, 3×3 conv 32 → 8, ReLU
    bilinear ×2 (align_corners=True, as there)
    decoder3: 3×3 conv 8 → 4, ReLU, 3×3 conv 4 → 2 (normal / anomalous logits)
    bilinear to (H, W) (align_corners=True); anomaly probability = softmax(·)[1]

Our ``forward`` returns the single logit l₁ − l₀ of the two-class head, so softmax(·)[1] =
σ(l₁ − l₀) and RealNet's two-class cross-entropy is exactly the binary cross-entropy with logits
on it: the loss is ``binary_cross_entropy_with_logits(l₁ − l₀, mask)``, mean over pixels (the
parameters are RealNet's, 2 output channels included).

Adaptation to this harness (the input). RealNet discriminates the squared residuals between
AFS-selected WideResNet-50 features and their reconstruction by a diffusion-style U-Net, at
stride 4 (1,536 channels, 512 selected). Here there is no reconstruction network: the input is
every FeatureSet layer of the frozen backbone resized (bilinear, anti-aliased when it shrinks)
to the coarse map's grid and concatenated — the same tensors ARD and DeSTSeg receive
(``bench/refiners/_trainable.py``), so that only the decoder differs — plus the normalised coarse
anomaly map as one extra channel appended after the selection (never dropped by it). The image
itself is not an input (RealNet's discriminator never sees it). The selection is applied only
when it reduces the input, i.e. when ΣC > sum(``selection``) (ViT-L: 4 × 1,024 channels → 512);
with fewer channels (the CNN default: 232) every channel is kept in its given order.
``selection=None`` turns it off. Note that ranking raw features by magnitude is not the anomaly
cue that ranking reconstruction residuals is; it is kept because it is RealNet's mechanism and
what bounds the decoder's width.

Other deviations from the official code, all for a like-for-like comparison inside PGT:
- training budget and optimiser are the shared ones (Adam, lr 1e-3, 80 steps of 8 images per
  group) instead of Adam lr 1e-4, batch 16, up to 1,000 epochs;
- the network runs at the coarse grid (×2 inside, then bilinear to the image) instead of stride 4;
- the 3×3 conv before decoder1's norm has no bias (RealNet: bias, redundant under BatchNorm);
  ``norm`` can replace that BatchNorm (the default, as there) by GroupNorm or nothing;
- no "SegmentFocalLoss": the repository defines it but its configurations train with the
  cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.refiners._blocks import check_norm, make_norm
from bench.refiners._trainable import TrainableRefiner, TrainOptions
from bench.registry import REFINERS


@dataclass
class RealNetOptions(TrainOptions):
    """Options of the RealNet decoder; every default is the one used unless a run config overrides it.

    Architecture (official values unless noted)
        selection: (256, 256) — channels kept per image by the spatial-max and spatial-mean
            rankings (RRS ``mode_numbers``); applied only when the features have more channels
            than their sum; None: no selection.
        residual_layers: 2 — residual units of decoder1's residual stack.
        widths: (128, 32, 8, 4) — decoder1's output, decoder2's two convs, decoder3's hidden conv.
        norm: "batch" — the norm after decoder1's conv: "batch" (as RealNet), "group" or "none".

    Coarse-map input and training budget (``use_anomaly_map``, ``coarse_norm``, ``norm_quantile``,
    ``coarse_clip``, ``steps`` 80, ``batch_size`` 8, ``lr`` 1e-3, ``weight_decay`` 0.0,
    ``refine_batch_size`` 16): shared by every trained decoder, see
    :class:`bench.refiners._trainable.TrainOptions`.

    Loss: RealNet's two-class cross-entropy, i.e. binary cross-entropy with logits on l₁ − l₀.
    """

    selection: tuple[int, int] | None = (256, 256)
    residual_layers: int = 2
    widths: tuple[int, int, int, int] = (128, 32, 8, 4)
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.selection is not None:
            self.selection = tuple(int(k) for k in self.selection)  # type: ignore[assignment]
            if len(self.selection) != 2 or min(self.selection) < 1:
                raise ValueError(f"selection must be None or 2 positive counts (max, mean), got {self.selection}")
        self.widths = tuple(int(c) for c in self.widths)  # type: ignore[assignment]
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must give 4 positive channel counts, got {self.widths}")
        if self.residual_layers < 0:
            raise ValueError(f"residual_layers must be >= 0, got {self.residual_layers}")
        super().__post_init__()
        check_norm(self.norm)


# --------------------------------------------------------------------------------------------
# the network


class Residual(nn.Module):
    """x + 1×1 conv(ReLU(3×3 conv(ReLU(x)))), without biases."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResidualStack(nn.Module):
    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(Residual(channels) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.layers(x))


class RealNetDiscriminator(nn.Module):
    """RRS: channel selection, residual decoder, ×2, two-class head: ``forward(x, a, size) -> (B,2,*size)``."""

    def __init__(self, feature_channels: int, opts: RealNetOptions) -> None:
        super().__init__()
        sel = opts.selection
        self.selection = sel if sel is not None and feature_channels > sum(sel) else None
        self.rank_norm = None
        if self.selection is not None:
            self.rank_norm = nn.BatchNorm2d(feature_channels, momentum=0.9, affine=False)
        c = (sum(self.selection) if self.selection is not None else feature_channels) + 1
        w1, w2a, w2b, w3 = opts.widths
        self.decoder1 = nn.Sequential(
            ResidualStack(c, opts.residual_layers),
            nn.Conv2d(c, w1, 3, padding=1, bias=opts.norm == "none"),
            make_norm(opts.norm, w1),
            nn.ReLU(),
        )
        self.decoder2 = nn.Sequential(
            nn.Conv2d(w1, w2a, 3, padding=1), nn.ReLU(), nn.Conv2d(w2a, w2b, 3, padding=1), nn.ReLU()
        )
        self.decoder3 = nn.Sequential(nn.Conv2d(w2b, w3, 3, padding=1), nn.ReLU(), nn.Conv2d(w3, 2, 3, padding=1))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Per image, the channels with the largest spatial max and spatial mean (standardised)."""
        if self.selection is None:
            return x
        b, c, h, w = x.shape
        standard = self.rank_norm(x).detach().flatten(2)  # updates the running statistics in train mode
        picks = []
        for k, stat in zip(self.selection, (standard.amax(-1), standard.mean(-1))):
            idx = stat.topk(k, dim=1, largest=True, sorted=True).indices
            picks.append(torch.gather(x, 1, idx[:, :, None, None].expand(b, k, h, w)))
        return torch.cat(picks, 1)

    def forward(self, x: torch.Tensor, anomaly: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.decoder2(self.decoder1(torch.cat([self.select(x), anomaly], 1)))
        y = F.interpolate(y, size=(2 * y.shape[-2], 2 * y.shape[-1]), mode="bilinear", align_corners=True)
        y = self.decoder3(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------------------------
# the refiner


def realnet_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """RealNet's two-class cross-entropy, written on the logit difference l₁ − l₀ (mean over pixels)."""
    return F.binary_cross_entropy_with_logits(logits, masks)


class RealNetRefiner(TrainableRefiner):
    """RealNet's discrimination network (RRS) on [features, coarse map], trained by PGT."""

    options_class = RealNetOptions
    display_name = "RealNet"
    opts: RealNetOptions

    def build(self, in_channels: int) -> RealNetDiscriminator:
        return RealNetDiscriminator(in_channels, self.opts)

    def forward(self, images: torch.Tensor, features: torch.Tensor, coarse_normalised: torch.Tensor) -> torch.Tensor:
        two = self.net(features, coarse_normalised, tuple(images.shape[-2:]))
        return two[:, 1:2] - two[:, 0:1]

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return realnet_loss(logits, masks)


@REFINERS.register("realnet", "RealNet's discrimination network (RRS: residual selection, residual decoder), trained by PGT")
def make_realnet(channels: dict[str, int], image_size: int, seed: int = 0, device: str = "cpu", **options: object) -> RealNetRefiner:
    """RealNet decoder; options: see :class:`RealNetOptions`."""
    return RealNetRefiner(channels, image_size, seed=seed, device=device, **options)
