"""APRIL-GAN (bench/methods/aprilgan/): the map and score formulas pinned by hand on a fake CLIP, the
prompt ensemble, adapter checkpoints (ours and the official key names), the errors, training, and
shapes / a `bench run` smoke test on a random ViT-B-32.

Encoding the full ensemble (420 sentences) with ViT-B-32's text tower takes ~40 s on one CPU
thread, so the ViT-B-32 checks use 1 of the 35 templates (``few_templates``); the ensemble's
contents are checked on their own.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fakes
from bench.errors import ConfigError, WeightsError
from bench.methods import aprilgan as A
from bench.methods._clip.adapters import linear_layers_from_official
from bench.methods._clip.auxiliary import dice_loss_from_probs, focal_loss_from_probs
from bench.methods.aprilgan import model as M
from bench.methods.aprilgan.train import TRAIN_BATCH_SIZE, train
from bench.records import FeatureSet
from bench.registry import METHODS
from clip_helpers import assert_learned_clip_info, assert_missing_weights_named, assert_runs, few_templates_fixture
from fakes import RandomTextEncoder, TinyBackbone

pytestmark = pytest.mark.usefixtures("one_thread")


few_templates = few_templates_fixture(M)


# --------------------------------------------------------------------------- a fake CLIP

ABNORMAL_MARKERS = ("damaged ", "broken ", " with flaw", " with defect", " with damage")


class FakeClip(fakes.FakeClip):
    """A 'CLIP' whose text tower maps normal sentences to (1, 0) and abnormal ones to (0, 1)."""

    abnormal = ABNORMAL_MARKERS

    def __init__(self, channels=None, embedding_dim=2):
        # layers given deepest first on purpose
        super().__init__(channels or {"block2": 2, "block1": 2}, embedding_dim=embedding_dim)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def hand_abnormal(y: tuple[float, float]) -> float:
    """softmax(100 · y/|y| · [(1,0), (0,1)])[1] = sigmoid(100 (y1 - y0) / |y|)."""
    return sigmoid(100.0 * (y[1] - y[0]) / math.hypot(*y))


# --------------------------------------------------------------------------- prompts


def test_prompt_ensemble_is_the_official_one():
    assert len(M.NORMAL_STATES) == 7 and len(M.ABNORMAL_STATES) == 5 and len(M.TEMPLATES) == 35
    normal, abnormal = M.prompt_sentences("metal_nut")
    assert len(normal) == 7 * 35 == 245 and len(abnormal) == 5 * 35 == 175
    assert len(set(normal)) == 245 and len(set(abnormal)) == 175
    # state-major order, the object name as is, template around the state
    assert normal[0] == "a bad photo of a metal_nut."
    assert normal[35] == "a bad photo of a flawless metal_nut."
    assert normal[-1] == "this is one metal_nut without damage in the scene."
    assert abnormal[0] == "a bad photo of a damaged metal_nut."
    assert abnormal[-1] == "this is one metal_nut with damage in the scene."
    assert "a photo of the small broken metal_nut." in abnormal


def test_class_embedding_is_the_normalised_mean_of_normalised_sentences():
    encode = RandomTextEncoder()
    text = M.class_text_embeddings(encode, "bottle")
    assert text.shape == (5, 2)
    normal, abnormal = M.prompt_sentences("bottle")
    for column, sentences in enumerate((normal, abnormal)):
        rows = [encode.table[s] / encode.table[s].norm() for s in sentences]
        mean = sum(rows) / len(rows)
        assert torch.allclose(text[:, column], mean / mean.norm(), atol=1e-6)


# --------------------------------------------------------------------------- the formulas


def bound_fake(**options) -> tuple[A.APRILGAN, FakeClip]:
    backbone = FakeClip()
    method = A.APRILGAN(checkpoint="untrained", **options)
    method.bind(backbone)
    return method, backbone


def set_linear(method, name, weight, bias):
    linear = method.learned.linears[name]
    linear.weight.data = torch.tensor(weight, dtype=torch.float32)
    linear.bias.data = torch.tensor(bias, dtype=torch.float32)


# Tokens of a 2×2 grid, one image, per layer: (B, C=2, h=2, w=2), patch p at (p // 2, p % 2).
TOKENS = [(1.0, 1.0), (1.0, 1.01), (1.01, 1.0), (2.0, 2.03)]


def _grid(tokens):
    return torch.tensor(tokens, dtype=torch.float32).T.reshape(1, 2, 2, 2)


def test_map_is_the_sum_over_layers_of_the_abnormal_softmax_by_hand():
    method, backbone = bound_fake()
    assert method.learned.layers == ("block1", "block2")  # increasing depth
    set_linear(method, "block1", [[1, 0], [0, 1]], [0, 0])  # identity
    set_linear(method, "block2", [[1, 0], [0, 2]], [0.01, -1.0])  # y = (x0 + 0.01, 2 x1 - 1)
    text = method.text("tile")
    assert torch.allclose(text, torch.eye(2))  # normal (1, 0), abnormal (0, 1)
    assert len(backbone.seen) == 245 + 175 and "a photo of a damaged tile." in backbone.seen

    embedding = torch.tensor([[1.0, 1.01], [0.6, 0.8]])
    features = FeatureSet({"block1": _grid(TOKENS).repeat(2, 1, 1, 1), "block2": _grid(TOKENS).repeat(2, 1, 1, 1)},
                          embedding, category="tile")
    out = method.score(features)
    expected = []
    for x in TOKENS:
        y = (x[0] + 0.01, 2 * x[1] - 1.0)
        expected.append(hand_abnormal(x) + hand_abnormal(y))
    assert out.maps.shape == (2, 2, 2)
    assert torch.allclose(out.maps[0].flatten(), torch.tensor(expected), atol=1e-5)
    assert torch.equal(out.maps[0], out.maps[1])
    # literal spot checks: x = (1, 1) gives 0.5 in the identity layer; y = (1.01, 1.0) in the other
    assert expected[0] == pytest.approx(0.5 + sigmoid(-100 * 0.01 / math.hypot(1.01, 1.0)))
    # image score: CLIP's zero-shot abnormal probability of the (normalised) image embedding
    assert out.image_scores[0].item() == pytest.approx(sigmoid(100 * 0.01 / math.hypot(1.0, 1.01)), abs=1e-5)
    assert out.image_scores[1].item() == pytest.approx(sigmoid(100 * 0.2), abs=1e-5)
    # per-image (reference ignored)
    assert torch.equal(method.score(features, reference=features.select([0])).maps, out.maps)


def test_the_evaluated_map_follows_the_official_order():
    method, _ = bound_fake()
    set_linear(method, "block1", [[1, 0], [0, 1]], [0, 0])
    set_linear(method, "block2", [[1, 0], [0, 1]], [0, 0])
    features = FeatureSet({"block1": _grid(TOKENS), "block2": _grid(TOKENS)}, torch.ones(1, 2), category="tile")
    out = method.score(features)
    maps = out.evaluated
    assert out.maps.shape == (1, 2, 2) and maps.shape == (1, 8, 8)
    # align_corners=True keeps the patch values at the corners; both layers are the identity
    corners = [maps[0, 0, 0], maps[0, 0, -1], maps[0, -1, 0], maps[0, -1, -1]]
    for value, x in zip(corners, TOKENS):
        assert value.item() == pytest.approx(2 * hand_abnormal(x), abs=1e-5)
    # the softmax comes after the upsampling: at the centre the logits are averaged first
    logits = [100 * (x[1] - x[0]) / math.hypot(*x) for x in TOKENS]
    centre = torch.nn.functional.interpolate(torch.tensor(logits).view(1, 1, 2, 2), size=(8, 8), mode="bilinear",
                                             align_corners=True)
    assert torch.allclose(maps[0], 2 * torch.sigmoid(centre[0, 0]), atol=1e-5)


def test_object_name_from_the_category_or_the_option():
    method, backbone = bound_fake()
    features = FeatureSet({"block1": _grid(TOKENS), "block2": _grid(TOKENS)}, torch.ones(1, 2))
    with pytest.raises(ConfigError, match="object_name"):
        method.score(features)  # no category
    features.category = "pill"
    method.score(features)
    assert set(method.prompts.cache) == {"pill"}
    named, backbone = bound_fake(object_name="capsule")
    named.score(features)
    assert set(named.prompts.cache) == {"capsule"} and "a photo of a broken capsule." in backbone.seen
    with pytest.raises(ConfigError, match="layer"):
        method.score(FeatureSet({"block1": _grid(TOKENS)}, torch.ones(1, 2), category="pill"))


# --------------------------------------------------------------------------- checkpoints and errors


def _official_state(channels: list[int], dim_out: int, count: int | None = None) -> dict:
    gen = torch.Generator().manual_seed(3)
    state = {}
    for i, c in enumerate(channels[: count or len(channels)] if count is None or count <= len(channels)
                          else channels + [channels[-1]] * (count - len(channels))):
        state[f"fc.{i}.weight"] = torch.randn(dim_out, c, generator=gen)
        state[f"fc.{i}.bias"] = torch.randn(dim_out, generator=gen)
    return state


def test_official_checkpoint_keys_map_to_layers_in_depth_order(tmp_path):
    channels = {"block12": 3, "block6": 4}  # deepest first: fc.0 must still go to block6
    raw = _official_state([4, 3], 5)
    path = tmp_path / "visa_pretrained.pth"
    torch.save({"trainable_linearlayer": raw}, path)
    method = METHODS.create("aprilgan", checkpoint=str(path))
    method.bind(FakeClip(channels, embedding_dim=5))
    assert torch.equal(method.learned.linears["block6"].weight, raw["fc.0.weight"])
    assert torch.equal(method.learned.linears["block6"].bias, raw["fc.0.bias"])
    assert torch.equal(method.learned.linears["block12"].weight, raw["fc.1.weight"])
    assert method.info.settings["official_key_mapping"] == {"fc.0": "block6", "fc.1": "block12"}
    assert linear_layers_from_official(raw, ["block6", "block12"]).keys() == {
        "linears.block6.weight", "linears.block6.bias", "linears.block12.weight", "linears.block12.bias"}
    # a bare state dict with the official names works too
    torch.save(raw, tmp_path / "bare.pth")
    bare = METHODS.create("aprilgan", checkpoint=str(tmp_path / "bare.pth"))
    bare.bind(FakeClip(channels, embedding_dim=5))
    assert torch.equal(bare.learned.linears["block12"].bias, raw["fc.1.bias"])


@pytest.mark.parametrize("make, needle", [
    (lambda: {"trainable_linearlayer": _official_state([4, 4], 5)}, "shape"),  # block12 is 3 wide
    (lambda: {"trainable_linearlayer": _official_state([4, 3, 3], 5, count=3)}, "3 linear layer"),
    (lambda: {"trainable_linearlayer": {"fc.0.weight": torch.zeros(5, 4), "fc.1.weight": torch.zeros(5, 3)}}, "bias"),
    (lambda: {"something": torch.zeros(2)}, "not an APRIL-GAN adapter checkpoint"),
    (lambda: {"format": A.FORMAT, "version": 1, "layers": ["block1"], "state_dict": {}}, "trained on layers"),
])
def test_incompatible_checkpoints_are_weights_errors_naming_the_file(tmp_path, make, needle):
    path = tmp_path / "adapters.pth"
    torch.save(make(), path)
    method = METHODS.create("aprilgan", checkpoint=str(path))
    with pytest.raises(WeightsError, match=needle) as info:
        method.bind(FakeClip({"block12": 3, "block6": 4}, embedding_dim=5))
    assert str(path) in str(info.value)


def test_unreadable_or_missing_files_are_weights_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("not a torch file")
    method = METHODS.create("aprilgan", checkpoint=str(junk))
    with pytest.raises(WeightsError, match="torch.load") as info:
        method.bind(FakeClip())
    assert str(junk) in str(info.value)
    missing = tmp_path / "nope" / "visa_pretrained.pth"
    with pytest.raises(WeightsError) as info:
        METHODS.create("aprilgan", checkpoint=str(missing)).bind(FakeClip())
    assert str(missing) in str(info.value) and "not found" in str(info.value)


def test_no_adapters_is_a_weights_error_naming_both_ways():
    clip = FakeClip()
    clip.weights = "openai"
    with pytest.raises(WeightsError) as info:
        METHODS.create("aprilgan").bind(clip)
    message = str(info.value)
    random_clip = FakeClip()
    random_clip.weights = "random"  # --weights random: a smoke run, the adapters are untrained
    method = METHODS.create("aprilgan")
    method.bind(random_clip)
    assert method.info.settings["checkpoint"] == "untrained"
    for needle in ("official", "visa_pretrained.pth", "mvtec_pretrained.pth", "aprilgan.train.train",
                   "method_options.aprilgan.checkpoint", "untrained"):
        assert needle in message, needle


def test_non_clip_backbone_and_bad_options_are_config_errors():
    method = METHODS.create("aprilgan", checkpoint="untrained")
    with pytest.raises(ConfigError, match="encode_text"):
        method.bind(TinyBackbone())
    with pytest.raises(ConfigError, match="bind"):
        method.score(FeatureSet({"pool4": torch.zeros(1, 3, 2, 2)}, torch.zeros(1, 3), category="x"))


def test_info_and_registration():
    method = METHODS.create("aprilgan", checkpoint="untrained")
    info = method.info
    assert_learned_clip_info(info, "2305.17382")
    assert method.backbone_options("ViT-L-14-336") == {
        "layers": ("block6", "block12", "block18", "block24"), "input_size": 518, "quick_gelu": False}
    assert method.backbone_options("ViT-B-32") == {}
    assert TRAIN_BATCH_SIZE == 8  # train.sh's batch
    assert "softmax" in info.deviations and info.settings["logit_scale"] == 100.0
    assert "aprilgan" in METHODS.resolve("all")  # untrained under --weights random, else skipped or an error


def test_losses_match_the_official_definitions():
    probs1 = torch.tensor([[0.9, 0.2], [0.3, 0.6]])
    probs = torch.stack([1 - probs1, probs1])[None]  # (1, 2, 2, 2)
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    focal = []
    for p, t in zip(probs1.flatten().tolist(), target.flatten().tolist()):
        onehot = (1e-5, 1 - 1e-5) if t == 1 else (1 - 1e-5, 1e-5)
        pt = onehot[0] * (1 - p) + onehot[1] * p + 1e-5
        focal.append(-((1 - pt) ** 2) * math.log(pt))
    assert focal_loss_from_probs(probs, target).item() == pytest.approx(sum(focal) / 4, rel=1e-5)
    dice = (2 * (0.9 + 0.6) + 1) / (2.0 + 2.0 + 1)
    assert dice_loss_from_probs(probs1[None], target).item() == pytest.approx(1 - dice, rel=1e-6)


# --------------------------------------------------------------------------- a random ViT-B-32


@pytest.fixture(scope="module")
def vit(few_templates):
    from bench.registry import BACKBONES

    return BACKBONES.create("ViT-B-32", weights="random", input_size=96)


def _features(backbone, n=3, category="tile"):
    rng = np.random.default_rng(0)
    x = backbone.preprocess([rng.integers(0, 256, (80, 90, 3), dtype=np.uint8) for _ in range(n)])
    features = backbone.features(x)
    features.category = category
    return features


def test_shapes_on_a_random_vit_b32(vit):
    method = METHODS.create("aprilgan", checkpoint="untrained")
    method.bind(vit)
    assert method.learned.layers == ("block3", "block6", "block9", "block12")
    assert all(l.in_features == 768 and l.out_features == 512 for l in method.learned.linears.values())
    features = _features(vit)
    out = method.score(features)
    assert out.maps.shape == (3, 3, 3) and out.image_scores.shape == (3,)
    assert out.maps.min() >= 0 and out.maps.max() <= 4 and torch.isfinite(out.maps).all()
    assert ((out.image_scores > 0) & (out.image_scores < 1)).all()
    assert method.text("tile").shape == (512, 2)
    assert out.evaluated.shape == (3, 96, 96)  # the official order at the input size


def test_adapter_checkpoint_round_trip(vit, tmp_path):
    method = METHODS.create("aprilgan", checkpoint="untrained", init_seed=5)
    method.bind(vit)
    features = _features(vit)
    before = method.score(features)
    path = method.save(tmp_path / "adapters.pt")
    loaded = METHODS.create("aprilgan", checkpoint=str(path), init_seed=9)  # the file wins over the init
    loaded.bind(vit)
    loaded.prompts.cache.update(method.prompts.cache)  # same backbone, same prompts: skip re-encoding them (speed)
    after = loaded.score(features)
    assert torch.equal(before.maps, after.maps) and torch.equal(before.image_scores, after.image_scores)
    other = METHODS.create("aprilgan", checkpoint="untrained", init_seed=9)
    other.bind(vit)
    assert not torch.equal(other.learned.linears["block3"].weight, loaded.learned.linears["block3"].weight)
    assert loaded.info.settings["checkpoint_source"] == "bench"
    assert loaded.provenance["saved_with"]["backbone"] == "ViT-B-32"


def test_train_reduces_its_loss(vit, synthetic_tiles, tmp_path):
    root = synthetic_tiles
    method = METHODS.create("aprilgan", checkpoint="untrained")
    with pytest.raises(ConfigError, match="epochs"):
        train(method, vit, root)  # no official epoch count for the synthetic set
    saved = tmp_path / "trained.pt"
    losses = train(method, vit, root, epochs=6, batch_size=8, save=saved)
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]
    assert min(losses[3:]) < min(losses[:3])
    # the trained adapters score, and the saved file gives the same maps
    features = _features(vit)
    reloaded = METHODS.create("aprilgan", checkpoint=str(saved))
    reloaded.bind(vit)
    reloaded.prompts.cache.update(method.prompts.cache)  # same prompts: skip re-encoding them (speed)
    assert torch.equal(reloaded.score(features).maps, method.score(features).maps)
    assert reloaded.provenance["trained"]["epochs"] == 6
    # mosaics (the official MVTec AD augmentation) run too
    more = train(method, vit, root, epochs=1, batch_size=4, mosaic_rate=1.0)
    assert len(more) == 2 and all(math.isfinite(v) for v in more)


def test_bench_run_smoke(few_templates, synthetic_tiles, tmp_path):
    out = tmp_path / "out"
    assert_runs("aprilgan", synthetic_tiles, out, "--set", "method_options.aprilgan.checkpoint=untrained")
    # adapters that are not there: one clear line naming the file and both ways to get them
    assert_missing_weights_named("aprilgan", synthetic_tiles, out, tmp_path / "visa_pretrained.pth",
                                 "aprilgan.train.train")
