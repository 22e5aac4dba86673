"""``external`` (bench/methods/external.py): maps made elsewhere, read by sample key; FeatureSet keys."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.errors import BenchError, ConfigError
from bench.records import FeatureSet
from bench.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


def _keyed(keys, category="cat"):
    n = len(keys)
    return FeatureSet({"a": torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)}, torch.zeros(n, 2), list(keys), category)


def _write_maps(folder, category, maps: dict[str, np.ndarray], scores: dict[str, float] | None = None):
    for key, value in maps.items():
        path = folder / category / "test" / f"{key}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, value)
    if scores is not None:
        with (folder / category / "image_scores.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "score"])
            writer.writerows(scores.items())


# --------------------------------------------------------------------------- FeatureSet keys


def test_keys_and_category_follow_select_and_concat():
    fs = _keyed(["good/000", "good/001", "crack/000", "crack/001"])
    assert fs.select(torch.tensor([2, 0])).keys == ["crack/000", "good/000"]
    assert fs.select([3]).keys == ["crack/001"] and fs.select(slice(1, 3)).keys == ["good/001", "crack/000"]
    assert fs.select(torch.as_tensor(np.array([1, 3]))).keys == ["good/001", "crack/001"]
    assert fs.select(torch.tensor([False, True, False, True])).keys == ["good/001", "crack/001"]
    assert fs.select([0]).category == "cat"
    both = FeatureSet.concat([fs.select([0]), fs.select([3])])
    assert both.keys == ["good/000", "crack/001"] and both.category == "cat"
    synthetic = FeatureSet({"a": torch.zeros(2, 1, 1, 1)}, torch.zeros(2, 2))
    assert synthetic.keys is None and synthetic.category is None
    assert FeatureSet.concat([fs, synthetic]).keys is None  # unknown images make the whole set unkeyed
    assert FeatureSet.concat([fs, _keyed(["x/0"], "other")]).category is None
    shaped = FeatureSet(fs.layers, fs.embedding, fs.keys, "cat", [(1, 1), (2, 2), (3, 3), (4, 4)])
    assert shaped.select(torch.tensor([False, True, False, True])).shapes == [(2, 2), (4, 4)]
    assert FeatureSet.concat([shaped.select([3]), shaped.select(slice(0, 1))]).shapes == [(4, 4), (1, 1)]
    assert FeatureSet.concat([shaped, synthetic]).shapes is None


# --------------------------------------------------------------------------- the method


def test_maps_and_scores_are_read_for_the_named_images(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"good/000": rng.random((8, 8)), "crack/003": rng.random((16, 16)) + 1}
    _write_maps(tmp_path, "cat", maps)
    method = METHODS.create("external", maps_dir=str(tmp_path), map_size=8)
    assert not method.info.scores_unseen_images and not method.info.inter_image
    out = method.score(_keyed(["crack/003", "good/000"]))
    assert out.maps.shape == (2, 8, 8)
    assert torch.allclose(out.maps[1], torch.from_numpy(maps["good/000"]).float())
    assert torch.equal(out.image_scores, out.maps.flatten(1).amax(1))  # no CSV: the map maximum
    _write_maps(tmp_path, "cat", {}, {"good/000": 0.25, "crack/003": 0.75})
    fresh = METHODS.create("external", maps_dir=str(tmp_path), map_size=8)
    assert fresh.score(_keyed(["crack/003", "good/000"])).image_scores.tolist() == [0.75, 0.25]
    with pytest.raises(BenchError, match="no score for good/001"):
        _write_maps(tmp_path, "cat", {"good/001": np.zeros((8, 8))})
        METHODS.create("external", maps_dir=str(tmp_path), map_size=8).score(_keyed(["good/001"]))


def test_map_size_defaults_to_the_backbones_input_size(tmp_path, tiny_backbone):
    _write_maps(tmp_path, "cat", {"good/000": np.ones((10, 10))})
    method = METHODS.create("external", maps_dir=str(tmp_path))
    method.bind(tiny_backbone)
    assert method.score(_keyed(["good/000"])).maps.shape == (1, tiny_backbone.input_size, tiny_backbone.input_size)


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="maps_dir"):
        METHODS.create("external")
    with pytest.raises(ConfigError, match="not a directory"):
        METHODS.create("external", maps_dir=str(tmp_path / "missing"))
    method = METHODS.create("external", maps_dir=str(tmp_path), map_size=4)
    unkeyed = FeatureSet({"a": torch.zeros(1, 1, 1, 1)}, torch.zeros(1, 2))
    with pytest.raises(BenchError, match="training-free refiners only"):
        method.score(unkeyed)
    with pytest.raises(BenchError, match=r"cat/test/good/007\.npy"):
        method.score(_keyed(["good/007"]))


def test_not_part_of_all_methods():
    assert "external" in METHODS.names() and "external" not in METHODS.resolve("all")
    assert METHODS.resolve("musc,external") == ["musc", "external"]


# --------------------------------------------------------------------------- through bench run


@pytest.fixture(scope="module")
def tree_and_maps(tmp_path_factory):
    from bench.data import open_dataset
    from bench.datasets.synthetic import generate

    root = generate(tmp_path_factory.mktemp("data") / "syn", seed=4, categories=["tile"], n_test=12, size=64, progress=False)
    maps_dir = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(1)
    maps, scores = {}, {}
    for sample in open_dataset(root).test("tile"):
        noisy = sample.mask.astype(np.float32) * 0.6 + rng.random(sample.mask.shape).astype(np.float32)
        maps[sample.key] = np.kron(noisy, np.ones((4, 4), np.float32))  # 256×256, the backbone's size
        scores[sample.key] = float(sample.label) * 0.3 + float(rng.random())
    _write_maps(maps_dir, "tile", maps, scores)
    return root, maps_dir


def test_bench_run_with_external_maps_matches_bench_eval(tree_and_maps, tmp_path):
    from bench.cli import main
    from bench.data import open_dataset
    from bench.evaluation import evaluate_maps
    from bench.tracking import open_store

    root, maps_dir = tree_and_maps
    args = ["run", "--data-root", str(root), "--out", str(tmp_path), "--methods", "external", "--refiners", "none,gaussian",
            "--set", f"method_options.external.maps_dir={maps_dir}", "--n-groups", "2", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    units = open_store(tmp_path).units()
    assert sorted(units.refiner) == ["gaussian", "none"] and set(units.method) == {"external"}
    none = units[units.refiner == "none"].iloc[0]
    expected = evaluate_maps(open_dataset(root), ["tile"], maps_dir, size=256)["tile"]
    for metric in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro"):
        assert none[metric] == pytest.approx(expected[metric], abs=1e-6), metric


def test_trainable_refiners_are_refused_before_any_work(tree_and_maps, tmp_path):
    from bench.cli import main

    root, maps_dir = tree_and_maps
    args = ["run", "--data-root", str(root), "--out", str(tmp_path), "--methods", "external", "--refiners", "ard",
            "--set", f"method_options.external.maps_dir={maps_dir}", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "trainable refiner(s) ard" in result.output and "training-free refiners" in result.output
    assert not (tmp_path / "cache").exists()  # failed before the backbone encoded anything
