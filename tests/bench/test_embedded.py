"""bench/embedded (the default dataset's generator) and the synthetic loader on its trees: deterministic,
valid layout, masks that match the defects."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from bench.data import check_dataset, open_dataset
from bench.datasets import synthetic
from bench.embedded import CATEGORIES, DEFECTS, OBJECTS, TEXTURES, generate, render_sample
from bench.errors import ConfigError, DatasetError
from bench.registry import DATASETS

SMALL = dict(n_test=12, n_train=3, size=64, progress=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "data", seed=0, **SMALL)


def test_categories() -> None:
    assert len(CATEGORIES) == 6 and len(TEXTURES) >= 3 and len(OBJECTS) >= 3
    assert all(2 <= len(DEFECTS[c]) <= 4 for c in CATEGORIES)


def test_marker_and_readme(tree: Path) -> None:
    info = json.loads((tree / "synthetic.json").read_text())
    assert info["seed"] == 0 and info["version"] == synthetic.GENERATOR_VERSION
    assert info["categories"] == list(CATEGORIES) and info["size"] == 64
    assert "seed 0" in (tree / "README.txt").read_text()


def test_layout_is_valid(tree: Path) -> None:
    ds = open_dataset(tree)
    assert ds.name == "synthetic" and ds.has_masks
    assert ds.categories() == sorted(CATEGORIES)
    summaries = check_dataset(ds, progress=False)
    for s in summaries:
        assert s["n_test"] == 12 and s["n_anomalous"] == 4 and s["n_good"] == 8  # one third
        assert s["sizes"] == ["64x64"] and s["n_train_good"] == 3
        assert s["n_empty_masks"] == 0 and s["warning"] is None
        assert set(s["defects"]) - {"good"} <= set(DEFECTS[s["category"]])


def test_masks_match_labels(tree: Path) -> None:
    ds = open_dataset(tree)
    for category in ds.categories():
        for sample in ds.test(category):
            if sample.label:
                raw = np.unique(np.asarray(Image.open(sample.mask_path)))
                assert set(raw.tolist()) == {0, 255}
                assert sample.mask.any()
            else:
                assert sample.mask_path is None and not sample.mask.any()


def test_anomalies_differ_from_their_surroundings(tree: Path) -> None:
    ds = open_dataset(tree)
    for category in ds.categories():
        for sample in ds.test(category):
            if not sample.label:
                continue
            image, mask = sample.image.astype(float), sample.mask
            ring = binary_dilation(mask, iterations=3) & ~mask
            contrast = np.abs(image[mask].mean(0) - image[ring].mean(0)).max()
            assert contrast > 10, (sample.path, contrast)


@pytest.mark.parametrize("category", CATEGORIES)
def test_defect_changes_exactly_the_mask(category: str) -> None:
    for k, defect in enumerate(DEFECTS[category]):
        clean, image, mask = render_sample(category, defect, np.random.default_rng(k), 64)
        diff = np.abs(clean.astype(int) - image.astype(int)).max(axis=2)
        assert mask.any()
        assert not diff[~mask].any(), f"{category}/{defect}: pixels changed outside the mask"
        assert diff[mask].mean() > 10, f"{category}/{defect}: defect barely visible"
        assert (diff[mask] > 0).mean() > 0.9


def test_normal_images_vary() -> None:
    for category in CATEGORIES:
        a = render_sample(category, None, np.random.default_rng(1), 64)[1]
        b = render_sample(category, None, np.random.default_rng(2), 64)[1]
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 2


def test_deterministic_from_seed(tree: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", seed=0, categories=["wood", "pcb"], **SMALL)
    other = generate(tmp_path / "other", seed=1, categories=["wood", "pcb"], **SMALL)
    files = ["wood/test/good/000.png", "wood/train/good/002.png", "pcb/test/missing_part/000.png",
             "pcb/ground_truth/missing_part/000_mask.png", "wood/test/crack/000.png"]
    for rel in files:
        assert (again / rel).read_bytes() == (tree / rel).read_bytes(), rel
    for rel in files[:3]:
        assert (other / rel).read_bytes() != (tree / rel).read_bytes(), rel


def test_regenerate_over_synthetic_tree(tmp_path: Path) -> None:
    root = generate(tmp_path / "d", seed=0, categories=["tile", "nut"], **SMALL)
    generate(root, seed=2, categories=["pill"], **SMALL)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["pill"]
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 2


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty") as err:
        generate(tmp_path, **SMALL)
    assert str(tmp_path) in str(err.value)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Known|known"):
        generate(tmp_path / "x", categories=["carpet"], **SMALL)
    with pytest.raises(ConfigError, match="too small"):
        generate(tmp_path / "x", n_test=3, n_train=0, size=8, progress=False)


def test_detect_prefers_synthetic(tree: Path) -> None:
    scores = {n: DATASETS.entry(n).factory.detect(tree) for n in DATASETS.names()}
    assert max(scores, key=scores.get) == "synthetic" and scores["folder"] > 0


def test_interrupted_run_is_not_a_dataset_and_is_restarted(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / synthetic.STAGING / "wood" / "test" / "good").mkdir(parents=True)  # a killed run's leftovers
    assert synthetic.SyntheticDataset.detect(root) == 0
    generate(root, seed=0, categories=["wood"], **SMALL)
    assert not (root / synthetic.STAGING).exists()
    assert open_dataset(root).name == "synthetic"


def test_two_runs_starting_at_once_write_the_embedded_tree_once(tmp_path: Path, monkeypatch) -> None:
    """Two runs on one fresh ``--out`` used to write into one staging folder and one of them failed."""
    import bench.embedded as embedded

    calls = []

    def slow_generate(root: Path, **kwargs) -> Path:
        calls.append(root)
        time.sleep(0.3)  # the second caller arrives while the tree is being written
        generate(root, categories=["wood"], **SMALL)
        return root

    monkeypatch.setattr(embedded, "generate", slow_generate)
    with ThreadPoolExecutor(2) as pool:  # flock excludes two open files of one process too
        roots = list(pool.map(lambda _: embedded.ensure_embedded(tmp_path, progress=False), range(2)))
    assert len(calls) == 1 and roots[0] == roots[1]
    assert open_dataset(roots[0]).name == "synthetic"
