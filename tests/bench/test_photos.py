"""The real-photograph set's generator (bench/photos.py), on stand-in photographs (no scikit-image needed)
and, where scikit-image is installed, on its real files."""
import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench import photos
from bench.cli import main
from bench.data import check_dataset, open_dataset
from bench.errors import ConfigError, DatasetError


@pytest.fixture
def fake_photos(tmp_path, monkeypatch):
    """Random stand-ins under every file name the generator reads (greyscale for the textures, as shipped)."""
    folder = tmp_path / "skimage_data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [s[0] for s in photos.SOURCES.values()] + list(photos.EXTRA_DONORS):
        shape = (90, 110) if name in ("brick.png", "grass.png", "gravel.png") else (120, 100, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    monkeypatch.setattr(photos, "photo_dir", lambda: folder)
    photos._photo.cache_clear()
    yield folder
    photos._photo.cache_clear()


@pytest.mark.parametrize("defect", photos.DEFECTS)
def test_a_defect_changes_exactly_its_mask(fake_photos, defect):
    clean, empty = photos.render("ihc", None, np.random.default_rng(5), 64)
    image, mask = photos.render("ihc", defect, np.random.default_rng(5), 64)  # the crop is drawn first: same clean image
    assert not empty.any() and image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.mean() >= photos.MIN_MASK_FRACTION
    assert np.array_equal(image[~mask], clean[~mask])
    assert (image[mask] != clean[mask]).any()


def test_tree_is_complete_deterministic_and_detected(fake_photos, tmp_path):
    root = photos.generate(tmp_path / "a", seed=1, categories=["brick", "retina"], n_test=8, n_train=2, size=48, progress=False)
    dataset = open_dataset(root)
    assert dataset.name == "photos" and dataset.categories() == ["brick", "retina"]
    rows = {r["category"]: r for r in check_dataset(dataset, progress=False)}
    assert all(r["n_test"] == 8 and r["n_anomalous"] == 3 and r["n_empty_masks"] == 0 and r["n_train_good"] == 2
               for r in rows.values())
    assert set(rows["brick"]["defects"]) == {"good", "patch", "scratch", "stain"}
    assert photos.read_marker(root)["sources"] == {"brick": "brick.png", "retina": "retina.jpg"}
    again = photos.generate(tmp_path / "b", seed=1, categories=["brick"], n_test=8, n_train=2, size=48, progress=False)
    other = photos.generate(tmp_path / "c", seed=2, categories=["brick"], n_test=8, n_train=2, size=48, progress=False)
    files = sorted(p.relative_to(again) for p in (again / "brick").rglob("*.png"))
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert any((root / f).read_bytes() != (other / f).read_bytes() for f in files)


def test_a_rerun_replaces_the_tree_and_a_foreign_folder_is_refused(fake_photos, tmp_path):
    root = photos.generate(tmp_path / "t", categories=["brick", "grass"], n_test=3, n_train=0, size=32, progress=False)
    photos.generate(root, categories=["gravel"], n_test=3, n_train=0, size=32, progress=False)
    assert open_dataset(root).categories() == ["gravel"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="refusing"):
        photos.generate(foreign, n_test=3, size=32, progress=False)
    with pytest.raises(ConfigError, match="photos categories"):
        photos.generate(tmp_path / "u", categories=["brik"], progress=False)


def test_without_scikit_image_one_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["data", "photos", "--root", str(tmp_path / "p")])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and "anorefiner-bench[photos]" in result.output
    assert not (tmp_path / "p").exists()


def test_cli_writes_the_tree(fake_photos, tmp_path):
    result = CliRunner().invoke(main, ["data", "photos", "--root", str(tmp_path / "p"), "--n-test", "3", "--size", "32",
                                       "--categories", "ihc"])
    assert result.exit_code == 0, result.output
    assert open_dataset(tmp_path / "p").categories() == ["ihc"]


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image (extra 'photos') is not installed")
def test_the_real_photographs_are_read():
    for category in photos.CATEGORIES:
        image, mask = photos.render(category, "patch", np.random.default_rng(0), 64)
        assert image.shape == (64, 64, 3) and image.std() > 5 and mask.any()
