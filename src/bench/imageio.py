"""Reading images and masks with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.errors import DatasetError


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty (0 bytes)")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return image


def read_image(path: Path) -> np.ndarray:
    """H×W×3 uint8 RGB; grayscale, palette and RGBA images are converted."""
    return np.asarray(_open(path).convert("RGB"))


def read_mask(path: Path, shape: tuple[int, int], strict: bool = True) -> np.ndarray:
    """H×W bool mask (pixel > 0), checked against the image ``shape``.

    ``strict`` requires two-valued masks (0 and one foreground value, as MVTec AD's 0/255); VisA
    stores defect labels, so its loader passes ``strict=False``.
    """
    mask = np.asarray(_open(path).convert("L"))
    if mask.shape != tuple(shape):
        raise DatasetError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]}; masks must have the image's size"
        )
    if strict:
        values = np.unique(mask)
        if len(values[values > 0]) > 1:
            raise DatasetError(
                f"{path}: mask is not binary (values {values[:6].tolist()}...); "
                "expected 0 for normal pixels and one value (e.g. 255) for defects"
            )
    return mask > 0
