"""WinCLIP (bench/methods/winclip.py): the map and score formulas pinned by hand on a fake CLIP with
hand-made window and text embeddings, the prompt ensemble, the backbone options, the errors, and a
random open_clip ViT / `bench run` smoke test.

Encoding the whole ensemble (231 sentences) with ViT-B-32's text tower takes ~20 s on one CPU
thread, so the ViT-B-32 checks use 1 of the 21 templates (``few_templates``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fakes
from bench.errors import ConfigError, WeightsError
from bench.methods import winclip as W
from bench.methods.winclip.windows import WindowEmbeddings
from bench.records import FeatureSet
from bench.registry import BACKBONES, METHODS
from clip_helpers import assert_runs, few_templates_fixture
from fakes import RandomTextEncoder, TinyBackbone

pytestmark = pytest.mark.usefixtures("one_thread")


few_templates = few_templates_fixture(W)


# --------------------------------------------------------------------------- a fake CLIP

ABNORMAL_MARKERS = ("damaged ", " with flaw", " with defect", " with damage")


class FakeClip(fakes.FakeClip):
    """A 'CLIP' with window embeddings whose text tower maps normal sentences to (1, 0) and abnormal ones to (0, 1)."""

    abnormal = ABNORMAL_MARKERS

    def __init__(self, windows=("window2", "window3")):
        super().__init__(extra_channels={name: 2 for name in windows})


def hand_abnormal(y) -> float:
    """softmax(cos(y, [(1,0), (0,1)]) / 0.07)[1] = sigmoid((y1 - y0) / |y| / 0.07)."""
    return 1.0 / (1.0 + math.exp(-(y[1] - y[0]) / math.hypot(*y) / 0.07))


def harmonic(values) -> float:
    return len(values) / sum(1.0 / v for v in values)


# --------------------------------------------------------------------------- prompts


def test_prompt_ensemble_is_anomalibs():
    assert len(W.NORMAL_STATES) == 7 and len(W.ABNORMAL_STATES) == 4 and len(W.TEMPLATES) == 21
    normal, abnormal = W.prompt_sentences("metal_nut")
    assert len(normal) == 7 * 21 and len(abnormal) == 4 * 21
    # anomalib's template list repeats "a jpeg corrupted photo of the {}.": kept, so it weighs twice
    assert len(set(normal)) == 7 * 20 and len(set(abnormal)) == 4 * 20
    assert normal[0] == "a cropped photo of the metal_nut."
    assert normal[21] == "a cropped photo of the flawless metal_nut."
    assert normal[-1] == "a photo of a metal_nut without damage for anomaly detection."
    assert abnormal[0] == "a cropped photo of the damaged metal_nut."
    assert abnormal[-1] == "a photo of a metal_nut with damage for anomaly detection."
    assert not any("broken" in s for s in abnormal)


def test_class_embedding_is_the_normalised_mean_of_the_raw_sentence_embeddings():
    encode = RandomTextEncoder()
    table = encode.table
    text = W.text_embeddings(encode, "bottle")
    assert text.shape == (5, 2)
    for column, sentences in enumerate(W.prompt_sentences("bottle")):
        mean = sum(table[s] for s in sentences) / len(sentences)  # anomalib: torch.mean of encode_text's output
        assert torch.allclose(text[:, column], mean / mean.norm(), atol=1e-6)
        unit = sum(table[s] / table[s].norm() for s in sentences) / len(sentences)
        assert not torch.allclose(text[:, column], unit / unit.norm(), atol=1e-3)  # the other rule differs here
    # the method asks its backbone for the raw (unnormalised) sentence embeddings
    method, backbone = bound_fake()
    method.text("bottle")
    assert backbone.normalize == {False}


# --------------------------------------------------------------------------- the formulas


def test_harmonic_coverage_matches_anomalibs_worked_example():
    # utils.harmonic_aggregation docstring: a 3x3 grid, four 2x2 windows scored 1, 0.75, 0.5, 0.25
    scores = torch.tensor([[[1.0, 0.75], [0.5, 0.25]]])
    expected = torch.tensor([[[1.0, 0.8571, 0.75], [0.6667, 0.48, 0.375], [0.5, 0.3333, 0.25]]])
    torch.testing.assert_close(W.harmonic_coverage(scores, 2), expected, atol=1e-4, rtol=0)
    # a zero score makes its patches zero (1/0 = inf), not NaN
    zero = W.harmonic_coverage(torch.tensor([[[0.0, 0.5], [0.5, 0.5]]]), 2)
    assert zero[0, 0, 0] == 0 and zero[0, 1, 1] == 0 and zero[0, 2, 2] == 0.5 and torch.isfinite(zero).all()


def bound_fake(**options) -> tuple[W.WinCLIP, FakeClip]:
    backbone = FakeClip()
    method = W.WinCLIP(**options)
    method.bind(backbone)
    return method, backbone


def test_map_and_image_score_by_hand():
    method, backbone = bound_fake()
    text = method.text("tile")
    assert torch.allclose(text, torch.eye(2))  # normal (1, 0), abnormal (0, 1)
    assert len(backbone.seen) == 147 + 84 and "a photo of a tile with defect for anomaly detection." in backbone.seen

    # a 4x4 patch grid: nine 2x2 windows, four 3x3 windows; window (i, j) has its top-left patch at (i, j)
    gen = torch.Generator().manual_seed(0)
    win2 = torch.rand(2, 2, 3, 3, generator=gen) + 0.05
    win3 = torch.rand(2, 2, 2, 2, generator=gen) + 0.05
    embedding = torch.tensor([[1.0, 1.05], [0.6, 0.8]])
    features = FeatureSet({"window2": win2, "window3": win3}, embedding, category="tile")
    out = method.score(features)
    assert out.maps.shape == (2, 4, 4) and out.image_scores.shape == (2,)
    for b in range(2):
        image = hand_abnormal(embedding[b].tolist())
        assert out.image_scores[b].item() == pytest.approx(image, rel=1e-5)
        for r in range(4):
            for c in range(4):
                per_scale = []
                for k, win in ((2, win2), (3, win3)):
                    covering = [hand_abnormal(win[b, :, i, j].tolist())
                                for i in range(4 - k + 1) for j in range(4 - k + 1)
                                if i <= r < i + k and j <= c < j + k]
                    per_scale.append(harmonic(covering))
                expected = harmonic(per_scale + [image])  # (S + 1) / sum of reciprocals
                assert out.maps[b, r, c].item() == pytest.approx(expected, rel=1e-5)
    # literal spot check: the corner patch is covered by one window per scale
    y2, y3 = win2[0, :, 0, 0].tolist(), win3[0, :, 0, 0].tolist()
    corner = 3 / (1 / hand_abnormal(y2) + 1 / hand_abnormal(y3) + 1 / hand_abnormal([1.0, 1.05]))
    assert out.maps[0, 0, 0].item() == pytest.approx(corner, rel=1e-5)
    # per-image (reference ignored)
    assert torch.equal(method.score(features, reference=features.select([0])).maps, out.maps)


def test_other_scales_read_their_own_layers():
    method, _ = bound_fake(scales=[2])
    win2 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # scores ~0, ~1, ~1, ~0
    out = method.score(FeatureSet({"window2": win2}, torch.tensor([[1.0, 1.0]]), category="tile"))
    low, high, half = hand_abnormal([1, 0]), hand_abnormal([0, 1]), 0.5
    assert out.maps[0, 0, 0].item() == pytest.approx(harmonic([low, half]), rel=1e-5)
    assert out.maps[0, 0, 1].item() == pytest.approx(harmonic([harmonic([low, high]), half]), rel=1e-5)
    assert out.maps[0, 1, 1].item() == pytest.approx(harmonic([harmonic([low, high, high, low]), half]), rel=1e-5)


# --------------------------------------------------------------------------- options and errors


def test_backbone_options_info_and_registration():
    method = METHODS.create("winclip")
    info = method.info
    assert info.default_backbone == "ViT-B-16-plus-240" and info.arxiv == "2303.14814"
    assert not info.needs_auxiliary_training and not info.inter_image and info.scores_unseen_images
    assert method.backbone_options("ViT-B-16-plus-240") == {
        "weights": "laion400m_e31", "input_size": 240, "extras": {WindowEmbeddings: {"sizes": (2, 3)}}}
    assert info.backbone_options["ViT-B-16-plus-240"]["weights"] == "laion400m_e31"
    assert method.backbone_options("ViT-B-32") == {"extras": {WindowEmbeddings: {"sizes": (2, 3)}}}
    assert method.backbone_options("efficientnet_lite0") == {}
    three = METHODS.create("winclip", scales=[3])
    assert three.backbone_options("ViT-L-14") == {"extras": {WindowEmbeddings: {"sizes": (3,)}}}
    assert info.settings["temperature"] == 0.07 and "raw sentence embeddings" in info.settings["prompts"]
    assert "winclip" in METHODS.resolve("all")


def test_errors_are_config_errors_naming_the_fix():
    method = METHODS.create("winclip")
    with pytest.raises(ConfigError, match="encode_text"):
        method.bind(TinyBackbone())
    with pytest.raises(ConfigError, match="window3"):
        method.bind(FakeClip(windows=("window2",)))
    with pytest.raises(ConfigError, match="bind"):
        method.score(FeatureSet({}, torch.zeros(1, 2), category="x"))
    method.bind(FakeClip())
    with pytest.raises(ConfigError, match="object_name"):
        method.score(FeatureSet({"window2": torch.ones(1, 2, 1, 1), "window3": torch.ones(1, 2, 1, 1)}, torch.ones(1, 2)))
    with pytest.raises(ConfigError, match="window3"):
        method.score(FeatureSet({"window2": torch.ones(1, 2, 1, 1)}, torch.ones(1, 2), category="x"))
    for bad in ([], [2, 2], [0], ["2"]):
        with pytest.raises(ConfigError, match="scales"):
            METHODS.create("winclip", scales=bad)


def test_object_name_option():
    method, backbone = bound_fake(object_name="capsule")
    method.score(FeatureSet({"window2": torch.ones(1, 2, 2, 2), "window3": torch.ones(1, 2, 1, 1)},
                            torch.ones(1, 2), category="pill"))
    assert set(method.prompts.cache) == {"capsule"} and "a photo of a damaged capsule." in backbone.seen


def test_official_weights_missing_offline_is_a_weights_error(monkeypatch):
    import open_clip

    from bench.backbones._clip_weights import cached_checkpoint

    if cached_checkpoint(open_clip.get_pretrained_cfg("ViT-B-16-plus-240", "laion400m_e31")):
        pytest.skip("the laion400m_e31 weights are cached here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = METHODS.create("winclip").backbone_options("ViT-B-16-plus-240")
    with pytest.raises(WeightsError, match="laion400m_e31"):
        BACKBONES.create("ViT-B-16-plus-240", **options)


# --------------------------------------------------------------------------- a random open_clip ViT


def test_random_vit_b32_end_to_end(few_templates):
    method = METHODS.create("winclip")
    backbone = BACKBONES.create("ViT-B-32", weights="random", input_size=128, **method.backbone_options("ViT-B-32"))
    method.bind(backbone)
    rng = np.random.default_rng(0)
    features = backbone.features(backbone.preprocess([rng.integers(0, 256, (70, 80, 3), dtype=np.uint8) for _ in range(2)]))
    features.category = "tile"
    assert features.layers["window2"].shape == (2, 512, 3, 3) and features.layers["window3"].shape == (2, 512, 2, 2)
    out = method.score(features)
    assert out.maps.shape == (2, 4, 4) and torch.isfinite(out.maps).all()
    assert ((out.maps > 0) & (out.maps < 1)).all() and ((out.image_scores > 0) & (out.image_scores < 1)).all()
    text = method.text("tile")
    scores = {k: W.abnormal_probability(features.layers[f"window{k}"].movedim(1, -1), text) for k in (2, 3)}
    image = W.abnormal_probability(features.embedding, text)
    torch.testing.assert_close(out.maps, W.anomaly_maps(image, scores))
    torch.testing.assert_close(out.image_scores, image)


def test_bench_run_smoke(few_templates, synthetic_tiles, tmp_path):
    assert_runs("winclip", synthetic_tiles, tmp_path / "out")
