"""Guided upsampling of the coarse map by the image: He et al.'s guided filter, training-free.

The coarse ``(B,h,w)`` map ``A`` is bilinearly upsampled to the image size (:func:`bench.ops.upsample`,
as ``none``) giving ``p``, which is then filtered with the image ``I`` as guide (K. He, J. Sun,
X. Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013, Algorithm 1). In every window ``ω_k`` of
radius ``r`` the output is modelled as an affine function of the guide, ``q = a_k·I + b_k``, fitted
to ``p`` by ridge regression::

    a_k = cov_k(I, p) / (var_k(I) + eps)        b_k = mean_k(p) − a_k·mean_k(I)
    q_i = mean over the windows k that contain i of (a_k·I_i + b_k)

so the map takes over the guide's edges where the image has structure (``var ≫ eps``) and is
plainly box-smoothed where the image is flat (``var ≪ eps``). ``q`` is linear in ``p``: the level of
the coarse scores does not interact with ``eps``, which only refers to the guide. The output is not
clipped (like every linear filter it may overshoot ``p``'s range slightly near edges).

Options (defaults documented here):
    radius: 8 — window radius in image pixels (window ``(2r+1)²``); 0 makes the filter the
        identity, i.e. the ``none`` refiner. 8 px is half the 16 px cell of a 16×16 coarse map at
        256 px, the scale at which the coarse map's blocky edges have to be moved.
    eps: 1e-3 — regularisation, in units of the squared guide intensity on a [0,1] guide: edges
        with contrast above ~sqrt(eps) ≈ 0.03 (8 grey levels of 255) are preserved.
    guide: "gray" — "gray" (the guide is the BT.601 luma 0.299 R + 0.587 G + 0.114 B) or "color"
        (the colour guided filter of He et al., eq. 14: ``a_k`` is a 3-vector, ``(Σ_k + eps·U)⁻¹
        cov_k(I, p)``; it also follows edges between colours of equal luma; ~5× the cost on CPU).
    mean, std: None — the backbone's per-channel normalisation (3 numbers each). Given, the guide is
        the de-normalised image ``x·std + mean`` clipped to [0,1]. None: the factory is not told the
        backbone, so each image's guide (luma, or the three channels jointly) is rescaled to [0,1]
        by its own min and max — an affine map of the de-normalised guide when the backbone's std
        is the same for every channel (EfficientNet-Lite: exactly; ImageNet's and CLIP's stds
        differ across channels by 2 % and 6 %); ``eps`` then refers to the image's own contrast.

Borders: windows are clipped to the image and every mean is over the pixels actually inside, as
in He et al.'s reference code (its ``boxfilter`` divided by ``N = boxfilter(ones)``).

Implementation: our own, on torch, the standard O(N) formulation — every windowed mean is a box
filter computed from cumulative sums along rows, then columns (cost independent of ``radius``),
in float64 so that the moment differences ``E[I²] − E[I]²`` keep their precision at any image size.
Libraries considered: ``cv2.ximgproc.guidedFilter`` needs ``opencv-contrib-python`` (a binary
package of tens of MB the project does not otherwise use; numpy-only, a Python loop per image) and
``kornia.filters.guided_blur`` needs ``kornia``; neither is a dependency of the project, and the
filter is twenty lines of tensor algebra checked against a per-pixel loop in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.interfaces import Refiner
from bench.ops import upsample
from bench.records import FeatureSet
from bench.refiners.gaussian import options_from
from bench.registry import REFINERS

GUIDES = ("gray", "color")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's and OpenCV's RGB → gray


def _triple(name: str, value: object) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(v == v and abs(v) != float("inf") for v in out):
        raise ConfigError(f"guided refiner: {name} must be None or 3 finite numbers (one per RGB channel), got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class GuidedOptions:
    """Options of the ``guided`` refiner; see the module docstring."""

    radius: int = 8
    eps: float = 1e-3
    guide: str = "gray"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        r = self.radius
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r != int(r) or r < 0:
            raise ConfigError(f"guided refiner: radius must be an integer >= 0 (pixels), got {r!r}")
        object.__setattr__(self, "radius", int(r))
        e = self.eps
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e < float("inf"):
            raise ConfigError(f"guided refiner: eps must be a finite number > 0, got {e!r}")
        object.__setattr__(self, "eps", float(e))
        if self.guide not in GUIDES:
            raise ConfigError(f"guided refiner: guide must be one of {', '.join(GUIDES)}, got {self.guide!r}")
        mean, std = _triple("mean", self.mean), _triple("std", self.std)
        if (mean is None) != (std is None):
            raise ConfigError("guided refiner: give both mean and std (the backbone's normalisation) or neither")
        if std is not None and min(std) <= 0:
            raise ConfigError(f"guided refiner: std must be > 0, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``x`` (``(..., H, W)``) over the ``(2r+1)²`` window around each pixel, clipped to the map.

    Separable, from cumulative sums: along each axis the map is zero-padded by ``r+1`` before and
    ``r`` after, so that with ``c`` its cumulative sum the window sum at ``i`` is
    ``c[i+2r+1] − c[i]``, then divided by the number of in-map pixels of the window.
    """
    r = radius
    for dim, pad in ((-2, (0, 0, r + 1, r)), (-1, (r + 1, r))):
        n = x.shape[dim]
        c = torch.cumsum(F.pad(x, pad), dim)
        sums = c.narrow(dim, 2 * r + 1, n) - c.narrow(dim, 0, n)
        i = torch.arange(n, device=x.device)
        count = ((i + r + 1).clamp(max=n) - (i - r).clamp(min=0)).to(x.dtype)
        x = sums / (count.view(-1, 1) if dim == -2 else count)
    return x


def guided_filter(guide: torch.Tensor, p: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter: ``guide`` ``(B,C,H,W)`` with C = 1 (grey) or 3 (colour), ``p`` ``(B,H,W)``.

    Computed in float64; returns ``(B,H,W)`` in ``p``'s floating dtype (float32 for integer input).
    """
    out_dtype = p.dtype if p.is_floating_point() else torch.float32
    I = guide.to(torch.float64)
    p = p.to(torch.float64)[:, None]
    if radius == 0:
        return p[:, 0].to(out_dtype)  # one-pixel windows: a = 0, b = p
    mean_I = box_mean(I, radius)
    mean_p = box_mean(p, radius)
    cov_Ip = box_mean(I * p, radius) - mean_I * mean_p
    if I.shape[1] == 1:
        var_I = box_mean(I * I, radius) - mean_I * mean_I
        a = cov_Ip / (var_I + eps)
    elif I.shape[1] == 3:
        # Σ_k + eps·U for every window: the 6 distinct entries of a symmetric positive definite
        # 3×3 matrix, inverted in closed form (adjugate / determinant, det >= eps³ > 0) as in
        # He et al.'s code; 2.4× faster than torch.linalg.solve on a (B,H,W,3,3) stack.
        m = box_mean(I[:, [0, 0, 0, 1, 1, 2]] * I[:, [0, 1, 2, 1, 2, 2]], radius)
        m = m - mean_I[:, [0, 0, 0, 1, 1, 2]] * mean_I[:, [0, 1, 2, 1, 2, 2]]
        s00, s01, s02, s11, s12, s22 = m.unbind(1)
        s00, s11, s22 = s00 + eps, s11 + eps, s22 + eps
        i00, i01, i02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
        i11, i12, i22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
        det = s00 * i00 + s01 * i01 + s02 * i02
        c0, c1, c2 = cov_Ip.unbind(1)
        a = torch.stack([i00 * c0 + i01 * c1 + i02 * c2,
                         i01 * c0 + i11 * c1 + i12 * c2,
                         i02 * c0 + i12 * c1 + i22 * c2], 1) / det[:, None]
    else:
        raise ValueError(f"the guide must have 1 or 3 channels, got {I.shape[1]}")
    b = mean_p - (a * mean_I).sum(1, keepdim=True)
    q = (box_mean(a, radius) * I).sum(1) + box_mean(b, radius)[:, 0]
    return q.to(out_dtype)


def make_guide(images: torch.Tensor, opts: GuidedOptions) -> torch.Tensor:
    """Backbone-normalised ``(B,3,H,W)`` images → the ``(B,1|3,H,W)`` guide in [0,1] (float64)."""
    x = images.to(torch.float64)
    if opts.mean is not None:
        mean = torch.tensor(opts.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(opts.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * std + mean).clamp(0, 1)
    if opts.guide == "gray":
        x = (x * torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if opts.mean is None:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
        x = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(x))
    return x


class GuidedRefiner(Refiner):
    """Bilinear upsampling, then He et al.'s guided filter with the image as guide (no training)."""

    def __init__(self, opts: GuidedOptions, device: str = "cpu") -> None:
        self.opts = opts
        self.device = torch.device(device)

    @torch.no_grad()
    def refine(self, images: torch.Tensor, features: FeatureSet, coarse: torch.Tensor) -> torch.Tensor:
        if images.shape[0] != coarse.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {coarse.shape[0]} coarse maps")
        up = upsample(coarse.to(self.device), tuple(images.shape[-2:]), align_corners=self.align_corners)
        guide = make_guide(images.to(self.device), self.opts)
        out = guided_filter(guide, up, self.opts.radius, self.opts.eps)
        return out.float().to(images.device)


@REFINERS.register("guided", "baseline: bilinear upsampling + guided filter with the image as guide (He et al.; no training)")
def make_guided(channels: dict[str, int] | None = None, image_size: int | None = None, seed: int = 0,
                device: str = "cpu", **options: object) -> GuidedRefiner:
    """Guided-filter refiner; options: ``radius`` (8 px), ``eps`` (1e-3), ``guide`` ("gray"), ``mean``/``std`` (None)."""
    return GuidedRefiner(options_from("guided", GuidedOptions, options), device=device)
