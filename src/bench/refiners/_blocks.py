"""Building blocks of the trained refiner decoders (ARD, DeSTSeg, RealNet): normalisation layers,
conv-norm-ReLU, resizing of trainable tensors and of inputs, a quantile for normalising coarse maps,
and the losses on logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("group", "batch", "none")


def check_norm(norm: str) -> None:
    """A ValueError unless ``norm`` is one of ``NORMS``."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def make_norm(kind: str, channels: int) -> nn.Module:
    """GroupNorm (8 groups, or fewer when they do not divide ``channels``), BatchNorm or nothing."""
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def conv_norm_relu(cin: int, cout: int, k: int, norm: str, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """conv (no bias when normalised; 'same' padding) → norm → ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, bias=norm == "none"),
        make_norm(norm, cout),
        nn.ReLU(inplace=True),
    )


def resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of a trainable tensor (no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def resize_input(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize of a non-trainable input; anti-aliased when it shrinks (a finer layer to the grid)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
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
# losses (on logits, mean over pixels)


def focal_loss_from_logits(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None
) -> torch.Tensor:
    """Binary focal loss on logits, mean over pixels: BCE·(1 − p_t)^γ (·α_t when ``alpha`` is given)."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - pt).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def dice_loss_from_logits(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice over the whole mini-batch (defined when every mask is empty)."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + target.sum() + smooth)
