"""The generic folder loader: MVTec-like trees with any category names; masks optional."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import open_dataset
from bench.errors import DatasetError
from bench.registry import DATASETS

Folder = DATASETS.entry("folder").factory


def png(path: Path, mode: str = "RGB", value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    Image.fromarray(np.full((16, 16, channels), value, np.uint8).squeeze(), mode).save(path)


def mask(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((16, 16), np.uint8)
    m[:3, :3] = 255
    Image.fromarray(m).save(path)


def make_tree(root: Path, masks: bool) -> Path:
    for cat in ("widget", "gear"):
        png(root / cat / "train" / "good" / "a.png")
        png(root / cat / "test" / "good" / "a.png", mode="L")
        png(root / cat / "test" / "good" / "b.jpg", mode="RGB")
        png(root / cat / "test" / "dent" / "a.png", mode="RGBA")
        if masks:
            mask(root / cat / "ground_truth" / "dent" / "a_mask.png")
    return root


def test_tree_with_masks(tmp_path: Path) -> None:
    ds = Folder(make_tree(tmp_path, masks=True))
    assert ds.has_masks and ds.categories() == ["gear", "widget"]
    samples = ds.test("gear")
    assert [(s.key, s.label) for s in samples] == [("good/a", 0), ("good/b", 0), ("dent/a", 1)]
    assert samples[2].mask_path == tmp_path / "gear" / "ground_truth" / "dent" / "a_mask.png"
    assert samples[2].mask.sum() == 9
    assert all(s.image.shape == (16, 16, 3) for s in samples)  # L, RGB jpg, RGBA


def test_tree_without_masks(tmp_path: Path) -> None:
    ds = Folder(make_tree(tmp_path, masks=False))
    assert not ds.has_masks
    samples = ds.test("widget")
    assert all(s.mask_path is None for s in samples)
    assert samples[2].label == 1 and samples[2].mask is None  # image-level metrics only
    assert samples[0].mask is not None and not samples[0].mask.any()
    assert not ds.category_has_masks("widget")


def test_masks_per_category(tmp_path: Path) -> None:
    root = make_tree(tmp_path, masks=False)
    mask(root / "gear" / "ground_truth" / "dent" / "a_mask.png")
    ds = Folder(root)
    assert not ds.has_masks  # not every category has masks
    assert ds.category_has_masks("gear") and not ds.category_has_masks("widget")
    assert ds.test("gear")[2].mask_path is not None


def test_plain_mask_name_accepted(tmp_path: Path) -> None:
    root = make_tree(tmp_path, masks=False)
    mask(root / "gear" / "ground_truth" / "dent" / "a.png")
    assert Folder(root).test("gear")[2].mask_path.name == "a.png"


def test_missing_mask_when_category_has_ground_truth(tmp_path: Path) -> None:
    root = make_tree(tmp_path, masks=True)
    png(root / "gear" / "test" / "dent" / "c.png")
    with pytest.raises(DatasetError) as err:
        Folder(root).test("gear")
    assert str(root / "gear" / "ground_truth" / "dent" / "c_mask.png") in str(err.value)


def test_detection(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", masks=False)
    assert Folder.detect(root) > 0
    assert DATASETS.entry("mvtec").factory.detect(root) == 0  # widget, gear: not MVTec AD names
    assert open_dataset(root).name == "folder"
    (tmp_path / "plain" / "images").mkdir(parents=True)
    assert Folder.detect(tmp_path / "plain") == 0
    assert Folder.detect(tmp_path / "missing") == 0


def test_category_without_test(tmp_path: Path) -> None:
    root = make_tree(tmp_path, masks=False)
    (root / "extra" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no test/ folder") as err:
        Folder(root)
    assert str(root / "extra" / "test") in str(err.value)


def test_empty_category(tmp_path: Path) -> None:
    root = make_tree(tmp_path, masks=False)
    (root / "bolt" / "test" / "good").mkdir(parents=True)
    (root / "bolt" / "test" / "good" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no test images") as err:
        Folder(root).test("bolt")
    assert str(root / "bolt" / "test") in str(err.value)


def test_unknown_category(tmp_path: Path) -> None:
    ds = Folder(make_tree(tmp_path, masks=False))
    with pytest.raises(DatasetError, match="Did you mean 'widget'"):
        ds.train_good("widgets")
