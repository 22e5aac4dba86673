"""Tensor operations shared by methods and refiners: upsampling grid maps, Gaussian smoothing.

One implementation each, so that a method reproducing its official post-processing
(AnomalyCLIP: upsample, then smooth with sigma 4 px) and the refiner that does the same for
every method (``none``, ``gaussian``) compute the same numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


def upsample(maps: torch.Tensor, size: tuple[int, int], *, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of grid maps to ``size``: ``(B, h, w)`` → ``(B, *size)``, ``(B, C, h, w)`` → ``(B, C, *size)``.

    ``align_corners`` is explicit: the field's code uses both (the official APRIL-GAN / VCP-CLIP /
    AdaCLIP logits: True; PyTorch's default and bench's protocol: False), and the two differ
    between patch centres. ``(B, h, w)`` maps are returned in float32.
    """
    if maps.dim() == 3:
        return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=align_corners)[:, 0]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners)


def gaussian_smooth(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """``(B, H, W)`` maps → the same maps, each smoothed by a Gaussian of ``sigma`` pixels (float32).

    ``scipy.ndimage.gaussian_filter`` on the two spatial axes (``mode="reflect"``, kernel radius
    ``int(truncate * sigma + 0.5)``): the call AnomalyCLIP's test code makes. ``sigma=0`` returns
    the maps unchanged.
    """
    maps = maps.float()
    if sigma == 0 or maps.numel() == 0:
        return maps
    array = maps.detach().cpu().numpy()
    out = gaussian_filter(array, sigma=sigma, truncate=truncate, mode="reflect", axes=(-2, -1))
    return torch.from_numpy(out).to(maps.device)
