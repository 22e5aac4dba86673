import numpy as np
import pytest
import torch

from bench.config import PGTConfig
from bench.errors import ConfigError
from bench.protocol import Stream, coarse_scores, make_groups, run_pgt, select_pseudo_normals, training_batch
from fakes import BrightnessMethod, CountingRefiner


def make_stream(backbone, n=24, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(80, 120, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=int)
    labels[::3] = 1
    for i in np.flatnonzero(labels):
        pixels[i, 8:16, 8:16] = 250  # a bright defect
    images = backbone.preprocess(list(pixels))
    return Stream(pixels, images, backbone.features(images), labels)


def test_groups_by_count_cover_the_stream_once_in_seeded_order():
    groups = make_groups(10, PGTConfig(n_groups=3), seed=1)
    assert [len(g) for g in groups] == [4, 3, 3]
    assert sorted(np.concatenate(groups).tolist()) == list(range(10))
    assert all((a == b).all() for a, b in zip(groups, make_groups(10, PGTConfig(n_groups=3), seed=1)))
    assert not all((a == b).all() for a, b in zip(groups, make_groups(10, PGTConfig(n_groups=3), seed=2)))


def test_groups_by_size_and_too_many_groups():
    assert [len(g) for g in make_groups(10, PGTConfig(group_size=4), seed=0)] == [4, 4, 2]
    with pytest.raises(ConfigError, match="n_groups"):
        make_groups(3, PGTConfig(n_groups=5), seed=0)


def test_pseudo_normals_are_the_lowest_scored_fraction():
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    labels = np.zeros(6, dtype=int)
    chosen = select_pseudo_normals(scores, labels, 0.5, 0.0, np.random.default_rng(0))
    assert sorted(chosen.tolist()) == [1, 3, 5]


@pytest.mark.parametrize("contamination,expected", [(0.0, 0), (0.2, 2), (0.5, 5), (1.0, 10)])
def test_contamination_puts_the_right_number_of_true_anomalies_in_the_set(contamination, expected):
    scores = np.arange(40, dtype=float)  # anomalies get the highest scores, never selected naturally
    labels = (np.arange(40) >= 20).astype(int)
    chosen = select_pseudo_normals(scores, labels, 0.25, contamination, np.random.default_rng(0))
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert labels[chosen].sum() == expected
    kept_normals = np.sort(chosen[labels[chosen] == 0])
    assert kept_normals.tolist() == list(range(10 - expected))  # the highest-scored normals were swapped out


def test_contamination_is_bounded_by_the_anomalies_available():
    """Fewer swaps than asked, with a warning (it was silent, and the results kept the label 1.0)."""
    scores = np.arange(10, dtype=float)
    labels = np.array([0] * 9 + [1])
    with pytest.warns(UserWarning, match="too few anomalous images to swap 5 of its 5 pseudo-normals"):
        chosen = select_pseudo_normals(scores, labels, 0.5, 1.0, np.random.default_rng(0))
    assert labels[chosen].sum() == 1 and len(chosen) == 5


def test_training_batch_pairs_pseudo_normals_with_synthetic_anomalies(tiny_backbone, brightness_method):
    stream = make_stream(tiny_backbone)
    stream.features.category = "tile"
    group = np.arange(12)
    pseudo = np.array([1, 2, 4, 5])
    batch = training_batch(stream, group, pseudo, brightness_method, tiny_backbone, PGTConfig(synth_per_group=6), np.random.default_rng(0))
    assert batch.images.shape == (10, 3, 32, 32) and batch.masks.shape == (10, 32, 32)
    assert batch.coarse.shape == (10, 8, 8) and len(batch.features) == 10
    assert batch.masks[:4].sum() == 0 and all(m.sum() > 0 for m in batch.masks[4:])
    assert torch.equal(batch.images[:4], stream.images[group[pseudo]])
    assert batch.features.category == "tile"  # synthetic images belong to the group's product


def test_streaming_reference_scores_each_group_against_the_groups_seen(tiny_backbone, brightness_method):
    stream = make_stream(tiny_backbone)
    groups = make_groups(24, PGTConfig(n_groups=3), seed=0)
    everything = coarse_scores(brightness_method, stream.features, groups, "all")
    seen = coarse_scores(brightness_method, stream.features, groups, "seen")
    last = torch.as_tensor(groups[-1])
    assert torch.allclose(seen.maps[last], everything.maps[last])  # the last group has seen everything
    first = torch.as_tensor(groups[0])
    direct = brightness_method.score(stream.features.select(first)).maps
    assert torch.allclose(seen.maps[first], direct)


def run_fake(backbone, method, warmup="none", seed=0, contamination=0.0):
    stream = make_stream(backbone)
    config = PGTConfig(n_groups=3, synth_per_group=4, warmup=warmup, fuse_coarse=0.0)  # the refined maps alone
    groups = make_groups(24, config, seed)
    coarse = coarse_scores(method, stream.features, groups, "all")
    refiner = CountingRefiner()
    out = run_pgt(stream, coarse, groups, method, backbone, {"fake": refiner}, config, contamination, seed)
    return stream, coarse, out, refiner


def test_pgt_trains_on_group_g_and_refines_group_g_plus_1(tiny_backbone, brightness_method):
    stream, coarse, out, refiner = run_fake(tiny_backbone, brightness_method)
    assert len(refiner.batches) == 2  # trained on G1 and G2; G3 is never a training group
    maps = out.maps["fake"]
    g1, g2, g3 = (torch.as_tensor(g) for g in out.groups)
    scaled = (coarse.maps - coarse.maps.min()) / (coarse.maps.max() - coarse.maps.min())
    up = torch.nn.functional.interpolate(scaled[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(maps[g1], up[g1])  # group 1 keeps its (rescaled) coarse maps
    assert torch.allclose(maps[g2], up[g2] + 1)  # refined after one training round
    assert torch.allclose(maps[g3], up[g3] + 2)  # weights carried: two rounds
    assert [log.losses.get("fake") for log in out.log] == [None, [1.0, 0.5], [1.0, 0.5]]
    # the training data of round 1 comes from group 1's lowest-scored images
    first = refiner.batches[0]
    assert first.images.shape[0] == out.log[1].n_pseudo_normals + 4


def test_warmup_self_trains_on_group_1_and_refines_it(tiny_backbone, brightness_method):
    _, coarse, out, refiner = run_fake(tiny_backbone, brightness_method, warmup="self")
    assert len(refiner.batches) == 2  # G1 (refines G1 and G2), then G2 (refines G3)
    assert [("fake" in log.train_seconds, "fake" in log.refine_seconds) for log in out.log] == [
        (True, True), (False, True), (True, True)]


def test_same_seed_same_numbers(tiny_backbone, brightness_method):
    a = run_fake(tiny_backbone, brightness_method, seed=3, contamination=0.3)
    b = run_fake(tiny_backbone, brightness_method, seed=3, contamination=0.3)
    assert torch.equal(a[2].maps["fake"], b[2].maps["fake"])
    for x, y in zip(a[3].batches, b[3].batches):
        assert torch.equal(x.images, y.images) and torch.equal(x.masks, y.masks)


def test_groups_too_small_for_an_inter_image_method(tiny_backbone, brightness_method):
    stream = make_stream(tiny_backbone, n=6)
    config = PGTConfig(n_groups=3)
    groups = make_groups(6, config, 0)
    coarse = coarse_scores(brightness_method, stream.features, groups, "all")
    with pytest.raises(ConfigError, match="needs at least 3"):
        run_pgt(stream, coarse, groups, brightness_method, tiny_backbone, {"fake": CountingRefiner()}, config, 0.0, 0)


def test_training_free_refiners_refine_group_1_too(tiny_backbone, brightness_method):
    from bench.registry import REFINERS

    stream = make_stream(tiny_backbone)
    config = PGTConfig(n_groups=3, synth_per_group=4)
    groups = make_groups(24, config, 0)
    coarse = coarse_scores(brightness_method, stream.features, groups, "all")
    smooth = REFINERS.create("gaussian", channels={"pool4": 3}, image_size=32, sigma=2)
    out = run_pgt(stream, coarse, groups, brightness_method, tiny_backbone, {"fake": CountingRefiner(), "gaussian": smooth}, config, 0.0, 0)
    assert ["gaussian" in log.refine_seconds for log in out.log] == [True, True, True]
    assert ["fake" in log.refine_seconds for log in out.log] == [False, True, True]


@pytest.mark.parametrize("align_corners", [False, True])
def test_none_upsamples_as_the_method_declares(tiny_backbone, brightness_method, align_corners):
    # what `none` evaluates is the method's grid map upsampled as its official code does
    # (MuSc: bilinear, align_corners=True); gaussian smooths that same upsampled map
    from dataclasses import replace

    from bench.refiners.gaussian import gaussian_smooth
    from bench.registry import REFINERS

    method = type(brightness_method)()
    method.info = replace(brightness_method.info, align_corners=align_corners)
    stream = make_stream(tiny_backbone)
    config = PGTConfig(n_groups=3, synth_per_group=4, fuse_coarse=0.0)  # gaussian's own map, unfused
    groups = make_groups(24, config, 0)
    coarse = coarse_scores(method, stream.features, groups, "all")
    refiners = {"none": REFINERS.create("none"), "gaussian": REFINERS.create("gaussian", sigma=2)}
    out = run_pgt(stream, coarse, groups, method, tiny_backbone, refiners, config, 0.0, 0)
    scaled = (coarse.maps - coarse.maps.min()) / (coarse.maps.max() - coarse.maps.min())
    up = torch.nn.functional.interpolate(scaled[:, None], size=(32, 32), mode="bilinear", align_corners=align_corners)[:, 0]
    assert torch.allclose(out.maps["none"], up, atol=1e-6)
    assert torch.allclose(out.maps["gaussian"], gaussian_smooth(up, 2.0, 4.0), atol=1e-5)
    other = torch.nn.functional.interpolate(scaled[:, None], size=(32, 32), mode="bilinear", align_corners=not align_corners)[:, 0]
    assert (out.maps["none"] - other).abs().max() > 1e-3


class EvaluatedMethod(BrightnessMethod):
    """The brightness fake with an official evaluation map that is not its grid map upsampled (squared, 32 px)."""

    def score(self, features, reference=None):
        out = super().score(features, reference)
        up = torch.nn.functional.interpolate(out.maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)
        out.evaluated = up[:, 0] ** 2
        return out


def minmax(maps):
    return (maps - maps.min()) / (maps.max() - maps.min())


@pytest.mark.parametrize("fuse", [0.0, 0.5])
def test_none_and_group_1_are_scored_on_the_methods_evaluation_map(tiny_backbone, fuse):
    from bench.registry import REFINERS

    method = EvaluatedMethod()
    stream = make_stream(tiny_backbone)
    config = PGTConfig(n_groups=3, synth_per_group=4, fuse_coarse=fuse)
    groups = make_groups(24, config, 0)
    coarse = coarse_scores(method, stream.features, groups, "all")
    fake = CountingRefiner()
    out = run_pgt(stream, coarse, groups, method, tiny_backbone, {"none": REFINERS.create("none"), "fake": fake},
                  config, 0.0, 0)
    evaluated = minmax(coarse.evaluated)  # the protocol's per-category rescale (monotone)
    assert torch.allclose(out.maps["none"], evaluated, atol=1e-6)  # every group
    assert not any("none" in log.refine_seconds for log in out.log)
    g1, g2 = (torch.as_tensor(g) for g in out.groups[:2])
    assert torch.allclose(out.maps["fake"][g1], evaluated[g1], atol=1e-6)  # group 1 keeps the evaluated map
    # later groups: the refiner consumed the grid maps (rescaled), never the evaluation map
    assert all(batch.coarse.shape[-2:] == coarse.maps.shape[-2:] for batch in fake.batches)
    up = torch.nn.functional.interpolate(minmax(coarse.maps)[:, None], size=(32, 32), mode="bilinear")[:, 0]
    assert torch.allclose(out.maps["fake"][g2], (1 - fuse) * (up[g2] + 1) + fuse * evaluated[g2], atol=1e-5)


def test_streaming_reference_keeps_the_evaluation_maps(tiny_backbone):
    method = EvaluatedMethod()
    stream = make_stream(tiny_backbone)
    groups = make_groups(24, PGTConfig(n_groups=3), seed=0)
    seen = coarse_scores(method, stream.features, groups, "seen")
    first = torch.as_tensor(groups[0])
    assert seen.evaluated.shape == (24, 32, 32)
    assert torch.allclose(seen.evaluated[first], method.score(stream.features.select(first)).evaluated)
