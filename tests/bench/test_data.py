"""open_dataset (detection), select_categories and check_dataset on tiny trees."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import check_dataset, detect_scores, open_dataset, select_categories
from bench.errors import DatasetError


def png(path: Path, value: int = 90, size: int = 16, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    Image.fromarray(np.full((size, size, channels), value, np.uint8).squeeze(), mode).save(path)
    return path


def mask(path: Path, size: int = 16, empty: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    if not empty:
        m[5:9, 5:9] = 255
    Image.fromarray(m).save(path)
    return path


def mvtec_tree(root: Path, categories: tuple[str, ...] = ("bottle", "screw")) -> Path:
    for cat in categories:
        png(root / cat / "train" / "good" / "000.png")
        png(root / cat / "test" / "good" / "000.png")
        png(root / cat / "test" / "good" / "001.png", mode="L")
        png(root / cat / "test" / "scratch" / "000.png", value=10)
        mask(root / cat / "ground_truth" / "scratch" / "000_mask.png")
    return root


def visa_tree(root: Path) -> Path:
    rel, mrel = "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"
    png(root / "candle/Data/Images/Normal/0000.JPG")
    png(root / rel)
    mask(root / mrel)
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,test,normal,candle/Data/Images/Normal/0000.JPG,\n"
        f"candle,test,anomaly,{rel},{mrel}\n"
    )
    return root


# ------------------------------------------------------------------ open_dataset


def test_detection_picks_each_layout(tmp_path: Path) -> None:
    assert open_dataset(mvtec_tree(tmp_path / "mvtec")).name == "mvtec"
    assert open_dataset(mvtec_tree(tmp_path / "folder", ("widget",))).name == "folder"
    assert open_dataset(visa_tree(tmp_path / "visa")).name == "visa"
    synth = mvtec_tree(tmp_path / "synth", ("wood",))
    (synth / "synthetic.json").write_text(json.dumps({"generator": "bench.datasets.synthetic", "version": 1}))
    assert open_dataset(synth).name == "synthetic"
    scores = detect_scores(synth)
    assert scores["synthetic"] > scores["mvtec"] > scores["folder"] > 0 == scores["visa"]


def test_named_loader(tmp_path: Path) -> None:
    root = mvtec_tree(tmp_path)
    ds = open_dataset(root, "folder")
    assert ds.name == "folder" and ds.categories() == ["bottle", "screw"]


def test_unknown_loader_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Did you mean 'mvtec'"):
        open_dataset(mvtec_tree(tmp_path), "mvtek")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_no_known_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png")
    with pytest.raises(DatasetError, match="no known dataset layout") as err:
        open_dataset(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    for looked_for in ("MVTec AD", "VisA", "split_csv/1cls.csv", "MVTec-like folder"):
        assert looked_for in message


# ------------------------------------------------------------------ select_categories


def test_select_categories(tmp_path: Path) -> None:
    ds = open_dataset(mvtec_tree(tmp_path, ("bottle", "screw", "tile")))
    assert select_categories(ds, None) == ["bottle", "screw", "tile"]
    assert select_categories(ds, "all") == ["bottle", "screw", "tile"]
    assert select_categories(ds, " tile, bottle ,tile") == ["tile", "bottle"]


def test_select_unknown_category(tmp_path: Path) -> None:
    ds = open_dataset(mvtec_tree(tmp_path))
    with pytest.raises(DatasetError, match="Did you mean 'screw'") as err:
        select_categories(ds, "bottle,scew")
    assert "Known: bottle, screw" in str(err.value)


# ------------------------------------------------------------------ check_dataset


def test_check_summaries(tmp_path: Path) -> None:
    root = mvtec_tree(tmp_path)
    png(root / "screw" / "test" / "scratch" / "001.png", size=20)
    mask(root / "screw" / "ground_truth" / "scratch" / "001_mask.png", size=20)
    ds = open_dataset(root)
    bottle, screw = check_dataset(ds, ["bottle", "screw"], progress=False)
    assert bottle == {
        "category": "bottle", "n_test": 3, "n_good": 2, "n_anomalous": 1,
        "defects": {"good": 2, "scratch": 1}, "sizes": ["16x16"], "has_masks": True,
        "n_train_good": 1, "n_empty_masks": 0, "warning": None,
    }
    assert screw["sizes"] == ["16x16", "20x20"] and screw["n_anomalous"] == 2


def test_check_frees_pixels(tmp_path: Path) -> None:
    ds = open_dataset(mvtec_tree(tmp_path))
    samples = ds.test("bottle")
    ds.test = lambda category: samples  # a loader that hands out the same Sample objects
    check_dataset(ds, ["bottle"], progress=False)
    assert all("image" not in vars(s) and "mask" not in vars(s) for s in samples)


def test_check_warns_on_one_sided_categories(tmp_path: Path) -> None:
    root = tmp_path
    png(root / "only_good" / "test" / "good" / "000.png")
    png(root / "only_bad" / "test" / "hole" / "000.png")
    mask(root / "only_bad" / "ground_truth" / "hole" / "000_mask.png", empty=True)
    summaries = {s["category"]: s for s in check_dataset(open_dataset(root), progress=False)}
    assert "only normal" in summaries["only_good"]["warning"]
    assert "only anomalous" in summaries["only_bad"]["warning"]
    assert summaries["only_bad"]["n_empty_masks"] == 1 and "empty mask" in summaries["only_bad"]["warning"]


def test_check_without_masks(tmp_path: Path) -> None:
    png(tmp_path / "gear" / "test" / "good" / "000.png")
    png(tmp_path / "gear" / "test" / "dent" / "000.png")
    (summary,) = check_dataset(open_dataset(tmp_path), progress=False)
    assert summary["has_masks"] is False and "image-level" in summary["warning"]


def test_check_names_a_corrupt_image(tmp_path: Path) -> None:
    root = mvtec_tree(tmp_path)
    bad = root / "screw" / "test" / "good" / "001.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as err:
        check_dataset(open_dataset(root), progress=False)
    assert str(bad) in str(err.value)


def test_check_names_a_mask_of_the_wrong_size(tmp_path: Path) -> None:
    root = mvtec_tree(tmp_path)
    bad = mask(root / "bottle" / "ground_truth" / "scratch" / "000_mask.png", size=12)
    with pytest.raises(DatasetError) as err:
        check_dataset(open_dataset(root), ["bottle"], progress=False)
    assert str(bad) in str(err.value)


def test_check_visa(tmp_path: Path) -> None:
    (summary,) = check_dataset(open_dataset(visa_tree(tmp_path)), progress=False)
    assert summary["defects"] == {"good": 1, "anomaly": 1} and summary["n_train_good"] == 0
