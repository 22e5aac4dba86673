"""The MVTec AD loader on tiny trees in the real layout (16×16 PNGs written by the test)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import open_dataset
from bench.errors import DatasetError
from bench.registry import DATASETS

MVTecAD = DATASETS.entry("mvtec").factory


def png(path: Path, mode: str = "RGB", value: int = 128, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = np.full((size, size, channels), value, np.uint8).squeeze()
    Image.fromarray(data, mode).save(path)
    return path


def mask(path: Path, box: tuple[int, int, int, int] = (4, 4, 8, 8), size: int = 16, on: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = on
    Image.fromarray(m).save(path)
    return path


def make_mvtec(root: Path) -> Path:
    """bottle (RGB, one RGBA image) and grid (grayscale), as in MVTec AD."""
    b = root / "bottle"
    png(b / "train" / "good" / "000.png")
    png(b / "train" / "good" / "001.png")
    png(b / "test" / "good" / "000.png")
    png(b / "test" / "good" / "001.png", mode="RGBA")
    for stem in ("000", "001"):
        png(b / "test" / "broken_large" / f"{stem}.png", value=40)
        mask(b / "ground_truth" / "broken_large" / f"{stem}_mask.png")
    png(b / "test" / "contamination" / "000.png", value=200)
    mask(b / "ground_truth" / "contamination" / "000_mask.png")
    g = root / "grid"
    png(g / "train" / "good" / "000.png", mode="L")
    png(g / "test" / "good" / "000.png", mode="L")
    png(g / "test" / "bent" / "000.png", mode="L", value=30)
    mask(g / "ground_truth" / "bent" / "000_mask.png")
    (root / "license.txt").write_text("not a category")
    return root


def test_loads_categories_samples_and_masks(tmp_path: Path) -> None:
    ds = MVTecAD(make_mvtec(tmp_path))
    assert ds.has_masks
    assert ds.categories() == ["bottle", "grid"]
    samples = ds.test("bottle")
    assert [s.key for s in samples] == [
        "good/000", "good/001", "broken_large/000", "broken_large/001", "contamination/000",
    ]
    assert [s.label for s in samples] == [0, 0, 1, 1, 1]
    assert all(s.category == "bottle" for s in samples)
    assert samples[0].mask_path is None
    assert samples[2].mask_path == tmp_path / "bottle" / "ground_truth" / "broken_large" / "000_mask.png"
    assert samples[2].mask.dtype == bool and samples[2].mask.sum() == 16
    assert not samples[0].mask.any()
    assert [p.name for p in ds.train_good("bottle")] == ["000.png", "001.png"]


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    ds = MVTecAD(make_mvtec(tmp_path))
    rgba = ds.test("bottle")[1]
    assert rgba.path.name == "001.png" and rgba.image.shape == (16, 16, 3)
    gray = ds.test("grid")[1]
    assert gray.defect == "bent"
    assert gray.image.shape == (16, 16, 3) and gray.image.dtype == np.uint8
    assert (gray.image == 30).all()


def test_detection_picks_mvtec(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    assert MVTecAD.detect(root) > DATASETS.entry("folder").factory.detect(root) > 0
    ds = open_dataset(root)
    assert ds.name == "mvtec"
    assert MVTecAD.detect(tmp_path / "nowhere") == 0


def test_detect_rejects_other_category_names(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    png(root / "widget" / "test" / "good" / "000.png")
    assert MVTecAD.detect(root) == 0
    assert open_dataset(root).name == "folder"


def test_extensions_case_insensitive_and_other_files_ignored(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    png(root / "grid" / "test" / "good" / "001.PNG", mode="L")
    (root / "grid" / "test" / "good" / "notes.txt").write_text("x")
    (root / "grid" / "test" / "good" / ".hidden.png").write_bytes(b"")
    assert [s.path.name for s in MVTecAD(root).test("grid")] == ["000.png", "001.PNG", "000.png"]


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=str(tmp_path / "absent")):
        MVTecAD(tmp_path / "absent")


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a folder") as err:
        MVTecAD(tmp_path / "file")
    assert str(tmp_path / "file") in str(err.value)


def test_no_category_folders(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no category folders") as err:
        MVTecAD(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_category_without_test_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    png(root / "cable" / "train" / "good" / "000.png")
    with pytest.raises(DatasetError, match="no test/ folder") as err:
        MVTecAD(root)
    assert str(root / "cable" / "test") in str(err.value)


def test_empty_category(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "cable" / "test" / "good").mkdir(parents=True)
    ds = MVTecAD(root)
    with pytest.raises(DatasetError, match="no test images") as err:
        ds.test("cable")
    assert str(root / "cable" / "test") in str(err.value)


def test_missing_mask_names_the_expected_path(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "bottle" / "ground_truth" / "broken_large" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match="mask not found") as err:
        MVTecAD(root).test("bottle")
    assert str(root / "bottle" / "ground_truth" / "broken_large" / "001_mask.png") in str(err.value)
    assert str(root / "bottle" / "test" / "broken_large" / "001.png") in str(err.value)


def test_unknown_category_suggests(tmp_path: Path) -> None:
    ds = MVTecAD(make_mvtec(tmp_path))
    with pytest.raises(DatasetError, match="Did you mean 'bottle'") as err:
        ds.test("botle")
    assert "bottle, grid" in str(err.value) and str(tmp_path) in str(err.value)


def test_bad_masks_checked_lazily(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    wrong_size = mask(root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png", size=8)
    not_binary = root / "bottle" / "ground_truth" / "contamination" / "000_mask.png"
    m = np.zeros((16, 16), np.uint8)
    m[:4], m[4:8] = 255, 100
    Image.fromarray(m).save(not_binary)
    samples = MVTecAD(root).test("bottle")  # structure is fine: no pixels read yet
    with pytest.raises(DatasetError, match="8x8") as err:
        samples[2].mask
    assert str(wrong_size) in str(err.value)
    with pytest.raises(DatasetError, match="not binary") as err:
        samples[4].mask
    assert str(not_binary) in str(err.value)


def test_webp_and_gif_images_are_read_not_skipped(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    good = root / "grid" / "test" / "good"
    Image.fromarray(np.full((16, 16), 90, np.uint8), "L").save(good / "002.webp", lossless=True)
    Image.fromarray(np.full((16, 16), 70, np.uint8), "L").convert("P").save(good / "003.gif")
    samples = MVTecAD(root).test("grid")
    assert [s.path.name for s in samples] == ["000.png", "002.webp", "003.gif", "000.png"]
    assert (samples[1].image == 90).all() and (samples[2].image == 70).all()
    assert samples[2].image.shape == (16, 16, 3)
