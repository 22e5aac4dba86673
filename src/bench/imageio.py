"""Reading images and masks with errors that name the file.

Pixels are decoded by the image's mode, never clipped: 16-bit grayscale (``I;16``, and ``I``
with values in 0..65535) is scaled to 8 bit (``/ 257``), palette, CMYK, grayscale and two-level
images are converted to RGB, and an alpha channel is ignored (the colour channels are used as
stored, not composited on a background). Modes without an unambiguous 8-bit reading (32-bit
float, signed or wider integers, e.g. a TIFF of int32) are an error naming the file. So are
images whose header claims more pixels than Pillow's decompression-bomb limit allows
(``Image.MAX_IMAGE_PIXELS`` × 2).

Masks: a transparent pixel is background. Images and masks are read as a viewer shows them: an EXIF orientation tag (cameras store the
pixels unrotated and tag them) is applied, since masks are drawn on the image as it is shown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bench.errors import DatasetError

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 16-bit PNGs in some Pillow versions
NO_8_BIT_READING = ("F",)  # 32-bit float: no agreed range
ORIENTATION = 0x0112  # the EXIF tag; values 5..8 swap width and height
TIFF_BITS, TIFF_SAMPLE_FORMAT = 258, 339  # TIFF tags: bits per sample; 1 unsigned, 2 signed integer


def _require_file(path: Path) -> Path:
    """``path`` as a Path; a DatasetError naming it when it is missing or empty (what PIL would call
    'cannot identify image file')."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty (0 bytes)")
    return path


def _open(path: Path) -> Image.Image:
    path = _require_file(path)
    try:
        image = Image.open(path)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: refused to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return image


def _sixteen_bit(image: Image.Image, path: Path) -> np.ndarray:
    """A 16-bit grayscale image as its uint16 values (H×W)."""
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DatasetError(f"{path}: {image.mode} image with values outside 0..65535; "
                           "expected 8- or 16-bit pixels")
    return values.astype(np.uint16)


def _unsupported(image: Image.Image, path: Path, kind: str | None = None) -> DatasetError:
    return DatasetError(f"{path}: {kind or f'image mode {image.mode!r}'} has no 8-bit reading; "
                        "save it as 8- or 16-bit grayscale, RGB or palette")


def _wide_tiff(image: Image.Image) -> str | None:
    """What a TIFF of 32-bit or signed integers holds, else None: Pillow opens it as mode "I", as it
    does a 16-bit image, but its values have no agreed scale (8-bit pixels saved as int32 read as
    16-bit were nearly black: image AUROC 100 -> 71.9)."""
    tags = getattr(image, "tag_v2", None)
    if image.mode != "I" or tags is None:
        return None
    bits = max(np.atleast_1d(tags.get(TIFF_BITS, 16)))
    signed = 2 in np.atleast_1d(tags.get(TIFF_SAMPLE_FORMAT, 1))
    return f"a TIFF of {bits}-bit {'signed ' if signed else ''}integers" if bits != 16 or signed else None


def read_image(path: Path) -> np.ndarray:
    """H×W×3 uint8 RGB, decoded by mode (see the module docstring)."""
    image = _open(path)
    wide = _wide_tiff(image)
    if wide:
        raise _unsupported(image, Path(path), wide)
    if image.mode in SIXTEEN_BIT:
        gray = np.round(_sixteen_bit(image, Path(path)) / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in NO_8_BIT_READING:
        raise _unsupported(image, Path(path))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when converting such a palette straight to RGB
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError:
        raise _unsupported(image, Path(path)) from None


def _gray(path: Path) -> np.ndarray:
    """A mask's values, H×W, at their own depth (16-bit masks are not clipped to 255); a
    transparent pixel is 0. Strokes of one colour on a transparent layer are the defect whatever
    that colour (black strokes are 255, not 0); a mask whose opaque pixels have several values
    (an opaque black background and white defects, with a few transparent pixels) keeps them."""
    image = _open(path)
    if image.mode in SIXTEEN_BIT:
        return _sixteen_bit(image, Path(path))
    if image.mode in NO_8_BIT_READING:
        raise _unsupported(image, Path(path))
    try:
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            opaque, gray = np.asarray(rgba)[..., 3] > 0, np.asarray(rgba.convert("L"))
            if not opaque.all() and np.unique(gray[opaque]).size == 1:  # one colour of strokes
                return opaque.astype(np.uint8) * 255
            return np.where(opaque, gray, 0).astype(np.uint8)
        return np.asarray(image.convert("L"))
    except ValueError:
        raise _unsupported(image, Path(path)) from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as shown (its EXIF orientation applied), from its header,
    without decoding its pixels."""
    path = _require_file(path)
    try:
        with Image.open(path) as image:
            turned = image.getexif().get(ORIENTATION) in (5, 6, 7, 8)
            return (image.width, image.height) if turned else (image.height, image.width)
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: refused to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None


def read_mask(path: Path, shape: tuple[int, int], strict: bool = True) -> np.ndarray:
    """H×W bool mask (pixel > 0), checked against the image ``shape``.

    ``strict`` requires two-valued masks (0 and one foreground value, as MVTec AD's 0/255); VisA
    stores defect labels, so its loader passes ``strict=False``.
    """
    mask = _gray(path)
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


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize_uint8(image: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
    """An H×W×3 uint8 image resized to ``size``×``size`` with PIL's ``resample`` filter (as it is when
    already that size)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), RESAMPLE[resample]))
