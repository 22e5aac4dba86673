"""Images decoded by mode: every mode gives the 8-bit RGB a viewer shows, never clipped values."""
import numpy as np
import pytest
from PIL import Image

from bench.errors import DatasetError
from bench.imageio import image_size, read_image, read_mask

RAMP = np.arange(256, dtype=np.uint8).reshape(16, 16)


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """Issue 17: a 16-bit PNG decoded as all-white (every pixel 255)."""
    path = tmp_path / "16.png"
    Image.fromarray(RAMP.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    assert np.array_equal(read_image(path), rgb(RAMP))


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.fromarray(RAMP).convert("P")
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "pt.png", transparency=0)
    want = np.asarray(palette.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "p.png"), want)
    assert np.array_equal(read_image(tmp_path / "pt.png"), want)  # transparency is ignored


def test_cmyk(tmp_path):
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    assert read_image(path)[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_ignored(tmp_path, mode):
    """The colour channels as stored, whatever the alpha (documented choice: no compositing)."""
    path = tmp_path / "alpha.png"
    image = Image.fromarray(rgb(RAMP)).convert(mode)
    image.putalpha(0)  # fully transparent
    image.save(path)
    assert np.array_equal(read_image(path), rgb(RAMP))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel(tmp_path, mode):
    path = tmp_path / "gray.png"
    image = Image.fromarray(RAMP).convert(mode)
    image.save(path)
    assert np.array_equal(read_image(path), np.asarray(image.convert("RGB")))


def test_float_images_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "float.tif"
    Image.new("F", (8, 8), 0.5).save(path)
    with pytest.raises(DatasetError, match=f"{path}: image mode 'F' has no 8-bit reading"):
        read_image(path)


def test_sixteen_bit_masks_keep_their_two_values(tmp_path):
    path = tmp_path / "mask.png"
    values = np.zeros((8, 8), np.uint16)
    values[:2] = 65535
    Image.fromarray(values).save(path)
    assert read_mask(path, (8, 8)).sum() == 16
    values[2] = 300  # a third value: not binary (it was clipped to 255 before)
    Image.fromarray(values).save(path)
    with pytest.raises(DatasetError, match="not binary"):
        read_mask(path, (8, 8))


def test_decompression_bomb_is_one_error(tmp_path):
    """A small PNG whose header claims 14000×14000 px (issue 17)."""
    path = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(path, optimize=True)
    assert path.stat().st_size < 100_000
    with pytest.raises(DatasetError, match=f"{path}: refused to decode"):
        read_image(path)
    with pytest.raises(DatasetError, match="refused to decode"):
        image_size(path)


def test_image_size_reads_the_header_only(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png") == (20, 30)


def test_a_mask_with_an_opaque_background_and_a_few_transparent_pixels_keeps_its_values(tmp_path):
    """Only strokes of one colour on a transparent layer are read by their opacity: an opaque black
    background with a white defect stays background where it is black."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[2:4, 2:4, :3] = 255  # the defect
    rgba[0, 0, 3] = 0  # one transparent pixel (an editor's edge)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    want = np.zeros((8, 8), bool)
    want[2:4, 2:4] = True
    assert (read_mask(tmp_path / "m.png", (8, 8)) == want).all()
