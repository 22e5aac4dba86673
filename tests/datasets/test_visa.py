"""The VisA loader on a tiny tree in the real layout (split_csv/1cls.csv, Data/Images, Data/Masks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import open_dataset
from bench.errors import DatasetError
from bench.registry import DATASETS

VisA = DATASETS.entry("visa").factory
HEADER = "object,split,label,image,mask"


def image(path: Path, mode: str = "RGB", value: int = 120, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    Image.fromarray(np.full((16, 16, channels), value, np.uint8).squeeze(), mode).save(path, format=fmt)


def label_mask(path: Path) -> None:
    """A VisA mask: defect instance labels 1 and 2 on a 0 background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((16, 16), np.uint8)
    m[2:4, 2:4] = 1
    m[10:12, 10:13] = 2
    Image.fromarray(m).save(path)


def make_visa(root: Path, extra_rows: tuple[str, ...] = ()) -> Path:
    rows = [HEADER]
    for obj in ("candle", "pcb1"):
        for i, split in enumerate(("train", "train", "test", "test")):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            image(root / rel, fmt="JPEG")
            rows.append(f"{obj},{split},normal,{rel},")
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            image(root / rel, mode="L" if obj == "pcb1" else "RGB", fmt="JPEG")
            label_mask(root / mrel)
            rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    rows += extra_rows
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_loads_split_labels_and_masks(tmp_path: Path) -> None:
    ds = VisA(make_visa(tmp_path))
    assert ds.has_masks and ds.categories() == ["candle", "pcb1"]
    samples = ds.test("candle")
    assert [(s.label, s.defect) for s in samples] == [(0, "good")] * 2 + [(1, "anomaly")] * 2
    assert [s.path.name for s in samples] == ["0002.JPG", "0003.JPG", "000.JPG", "001.JPG"]
    assert samples[0].mask_path is None and not samples[0].mask.any()
    assert samples[2].mask_path == tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert [p.name for p in ds.train_good("candle")] == ["0000.JPG", "0001.JPG"]
    assert len({s.key for s in samples}) == len(samples)


def test_label_masks_are_binarised(tmp_path: Path) -> None:
    sample = VisA(make_visa(tmp_path)).test("candle")[2]
    m = sample.mask
    assert m.dtype == bool and m.sum() == 4 + 6  # both labels 1 and 2 count as defect


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    sample = VisA(make_visa(tmp_path)).test("pcb1")[2]
    assert sample.image.shape == (16, 16, 3) and sample.image.dtype == np.uint8


def test_detection_picks_visa(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    assert VisA.detect(root) > 0
    assert DATASETS.entry("mvtec").factory.detect(root) == 0
    assert open_dataset(root).name == "visa"
    assert VisA.detect(tmp_path / "candle") == 0


def test_missing_csv(tmp_path: Path) -> None:
    (tmp_path / "candle").mkdir()
    with pytest.raises(DatasetError, match="split file not found") as err:
        VisA(tmp_path)
    assert str(tmp_path / "split_csv" / "1cls.csv") in str(err.value)


def test_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "split_csv").mkdir()
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    csv_path.write_text("object,split,image\ncandle,test,a.JPG\n")
    with pytest.raises(DatasetError, match="missing column") as err:
        VisA(tmp_path)
    assert str(csv_path) in str(err.value) and "label, mask" in str(err.value)


def test_row_naming_a_missing_image(tmp_path: Path) -> None:
    root = make_visa(tmp_path, ("candle,test,normal,candle/Data/Images/Normal/9999.JPG,",))
    with pytest.raises(DatasetError, match="line 14") as err:
        VisA(root).test("candle")
    assert str(root / "candle" / "Data" / "Images" / "Normal" / "9999.JPG") in str(err.value)
    assert str(root / "split_csv" / "1cls.csv") in str(err.value)


def test_row_naming_a_missing_mask(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    gone = root / "pcb1" / "Data" / "Masks" / "Anomaly" / "001.png"
    gone.unlink()
    with pytest.raises(DatasetError, match="mask file") as err:
        VisA(root).test("pcb1")
    assert str(gone) in str(err.value)


def test_anomaly_without_mask_field(tmp_path: Path) -> None:
    root = make_visa(tmp_path, ("candle,test,anomaly,candle/Data/Images/Anomaly/009.JPG,",))
    image(root / "candle/Data/Images/Anomaly/009.JPG", fmt="JPEG")
    with pytest.raises(DatasetError, match="mask field is empty") as err:
        VisA(root).test("candle")
    assert "line 14" in str(err.value)


def test_bad_label(tmp_path: Path) -> None:
    root = make_visa(tmp_path, ("candle,test,broken,candle/Data/Images/Anomaly/000.JPG,",))
    with pytest.raises(DatasetError, match="label 'broken'") as err:
        VisA(root)
    assert str(root / "split_csv" / "1cls.csv") in str(err.value)


def test_unknown_category(tmp_path: Path) -> None:
    ds = VisA(make_visa(tmp_path))
    with pytest.raises(DatasetError, match="Did you mean 'candle'") as err:
        ds.test("candel")
    assert "candle, pcb1" in str(err.value)


def test_duplicate_rows_are_rejected_naming_both_lines(tmp_path: Path) -> None:
    """A repeated row would count an image twice (issue 17: image AUROC 100 -> 0)."""
    root = make_visa(tmp_path, ("candle,test,anomaly,./candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",))
    with pytest.raises(DatasetError, match="lines 6 and 14: image candle/Data/Images/Anomaly/000.JPG is listed twice"):
        VisA(root)


def test_test_images_sharing_a_key_are_rejected(tmp_path: Path) -> None:
    """Two anomalous images with one stem in different folders would share one map in `bench eval`."""
    root = make_visa(tmp_path, ("candle,test,anomaly,candle/Data/Images/Other/000.png,candle/Data/Masks/Anomaly/000.png",))
    image(root / "candle/Data/Images/Other/000.png")
    with pytest.raises(DatasetError, match="share the key 'anomaly/000'"):
        VisA(root).test("candle")


def test_dangling_link_is_named(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    victim = root / "candle/Data/Images/Normal/0002.JPG"
    victim.unlink()
    victim.symlink_to(tmp_path / "gone.JPG")
    with pytest.raises(DatasetError, match="0002.JPG: symbolic link points to a missing file"):
        VisA(root).test("candle")


def test_one_dataclass_decorator_per_row() -> None:
    """``_Row`` is a frozen dataclass (it had two stacked ``@dataclass`` decorators)."""
    import dataclasses
    import inspect

    from bench.datasets import visa

    assert dataclasses.fields(visa._Row)[0].name == "line"
    assert inspect.getsource(visa).count("@dataclass") == 1
