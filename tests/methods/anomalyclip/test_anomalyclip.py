"""AnomalyCLIP (bench/methods/anomalyclip/): the map, image-score and training-loss formulas pinned by
hand on a fake CLIP, the learned text forward pinned against open_clip's own ``encode_text`` with
the learned tokens put in by hooks, prompt checkpoints (the official key names on a fabricated
state dict, and ours), the errors, training, and a `bench run` smoke test on a random ViT-B-32."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

import fakes
from bench.errors import ConfigError, WeightsError
from bench.methods import anomalyclip as AC
from bench.methods.anomalyclip import model as M
from bench.methods.anomalyclip.dpam import DPAM
from bench.methods.anomalyclip.train import train, training_loss
from bench.records import FeatureSet
from bench.registry import BACKBONES, METHODS
from clip_helpers import assert_learned_clip_info, assert_missing_weights_named, assert_runs
from fakes import TinyBackbone

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- a fake CLIP


class FakeClip(fakes.FakeClip):
    """A 'CLIP' whose joint space is its token space (``project_tokens`` is the identity) and whose
    text tower is never run: the tests put the text embeddings in the method's text cache."""

    weights = "random"

    def __init__(self, width=4, dim=2, text_blocks=12, dpam=True):
        super().__init__({"block1": 3}, {"dpam.block1": dim, "dpam.block2": dim, "dpam.embedding": dim} if dpam else {})
        self.model = SimpleNamespace(token_embedding=None, ln_final=nn.LayerNorm(width),
                                     transformer=SimpleNamespace(resblocks=[None] * text_blocks))
        self.tokenizer = lambda texts: torch.zeros(len(texts), 77, dtype=torch.long)

    def project_tokens(self, tokens):
        return tokens


def bound_fake(**options):
    method = AC.AnomalyCLIP(checkpoint="untrained", **options)
    method.bind(FakeClip())
    method._text = torch.eye(2)  # the text cache: T = normal (1, 0), anomalous (0, 1)
    return method


def hand_anomalous(y) -> float:
    """softmax over (normal, anomalous) of cos(y, T) / 0.07, T = the unit vectors: the anomalous part."""
    norm = math.hypot(*y)
    e0, e1 = math.exp(y[0] / norm / 0.07), math.exp(y[1] / norm / 0.07)
    return e1 / (e0 + e1)


# Tokens of a 2×2 grid, one image, per layer: (B, C=2, h=2, w=2), patch p at (p // 2, p % 2).
LAYER1 = [(1.0, 1.0), (1.0, 1.05), (1.2, 1.0), (0.3, -0.4)]
LAYER2 = [(0.6, 0.8), (2.0, 0.1), (-1.0, 1.0), (0.5, 0.5)]


def _grid(tokens):
    return torch.tensor(tokens, dtype=torch.float32).T.reshape(1, 2, 2, 2)


def _features(embedding=((0.6, 0.8),)):
    e = torch.tensor(embedding, dtype=torch.float32)
    n = len(e)
    layers = {"dpam.block1": _grid(LAYER1).repeat(n, 1, 1, 1), "dpam.block2": _grid(LAYER2).repeat(n, 1, 1, 1),
              "dpam.embedding": e[:, :, None, None]}
    return FeatureSet(layers, embedding=-e, category="tile")  # CLIP's embedding must not be used


# --------------------------------------------------------------------------- the formulas


def test_map_and_image_score_by_hand():
    method = bound_fake()
    assert method.layers == ("dpam.block1", "dpam.block2")
    out = method.score(_features(((0.6, 0.8), (1.0, -2.0))))
    expected = [hand_anomalous(a) + hand_anomalous(b) for a, b in zip(LAYER1, LAYER2)]
    assert out.maps.shape == (2, 2, 2)
    torch.testing.assert_close(out.maps[0].flatten(), torch.tensor(expected), rtol=0, atol=1e-6)
    assert torch.equal(out.maps[0], out.maps[1])
    # literal spot checks: an undecided token gives 1/2; the temperature is 0.07, not CLIP's 100
    assert hand_anomalous((1.0, 1.0)) == 0.5
    assert hand_anomalous((0.6, 0.8)) == pytest.approx(1 / (1 + math.exp(-0.2 / 0.07)))
    assert out.maps[0, 1, 1].item() == pytest.approx(hand_anomalous((0.3, -0.4)) + 0.5, abs=1e-6)
    # the image score reads dpam.embedding (the official image feature), not FeatureSet.embedding
    assert out.image_scores.tolist() == pytest.approx([hand_anomalous((0.6, 0.8)), hand_anomalous((1.0, -2.0))],
                                                      abs=1e-6)
    assert out.image_scores[0].item() == pytest.approx(0.9457, abs=1e-4)
    # per-image: the reference is ignored
    assert torch.equal(method.score(_features(), reference=_features()).maps, method.score(_features()).maps)


def test_the_evaluated_map_is_the_official_upsample_sum_and_gaussian():
    out = bound_fake().score(_features())
    grid, maps = out.maps, out.evaluated
    assert grid.shape == (1, 2, 2) and maps.shape == (1, 8, 8)
    # test.py: each layer's probabilities upsampled (bilinear, align_corners=False) to the input size,
    # the anomalous channel summed over layers, then scipy's gaussian_filter with sigma 4
    official = 0
    for tokens in (LAYER1, LAYER2):
        p = torch.tensor([hand_anomalous(y) for y in tokens]).view(1, 1, 2, 2)
        official = official + F.interpolate(p, size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    official = gaussian_filter(official.numpy(), sigma=4)
    np.testing.assert_allclose(maps[0].numpy(), official, atol=1e-5)
    unsmoothed = F.interpolate(grid[None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    assert not torch.allclose(maps[0], unsmoothed, atol=1e-3)


def test_training_loss_by_hand():
    # two anomalous images of 2x2 pixels, the second with an empty mask (a defect too small for the mask's size)
    p1 = [torch.tensor([[[0.9, 0.2], [0.3, 0.6]], [[0.1, 0.4], [0.2, 0.3]]]),
          torch.tensor([[[0.7, 0.5], [0.5, 0.8]], [[0.6, 0.1], [0.2, 0.9]]])]
    masks = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([1, 1])
    logits = torch.tensor([[0.3, 1.2], [2.0, -1.0]])
    layer_probs = [torch.stack([1 - p, p], dim=1) for p in p1]
    got = training_loss(layer_probs, logits, masks, labels).item()

    def focal(p, t):  # loss.py: one-hot clamped to [1e-5, 1 - 1e-5], p_t + 1e-5, gamma 2, mean over pixels
        terms = []
        for pi, ti in zip(p.flatten().tolist(), t.flatten().tolist()):
            onehot = (1e-5, 1 - 1e-5) if ti == 1 else (1 - 1e-5, 1e-5)
            pt = onehot[0] * (1 - pi) + onehot[1] * pi + 1e-5
            terms.append(-((1 - pt) ** 2) * math.log(pt))
        return sum(terms) / len(terms)

    def dice(p, t):  # BinaryDiceLoss: 1 - mean over images of (2 Σ p t + 1) / (Σ p + Σ t + 1)
        per_image = [(2 * (pi * ti).sum().item() + 1) / (pi.sum().item() + ti.sum().item() + 1) for pi, ti in zip(p, t)]
        return 1 - sum(per_image) / len(per_image)

    segmentation = sum(focal(p, masks) + dice(p, masks) + dice(1 - p, 1 - masks) for p in p1)
    ce = sum(-math.log(math.exp(l[y]) / (math.exp(l[0]) + math.exp(l[1])))
             for l, y in zip(logits.tolist(), labels.tolist())) / 2  # the images' labels, not their masks
    assert got == pytest.approx(ce + 4 * segmentation, rel=1e-5)


# --------------------------------------------------------------------------- a random ViT-B-32


@pytest.fixture(scope="module")
def vit():
    options = METHODS.create("anomalyclip").backbone_options("ViT-B-32")
    return BACKBONES.create("ViT-B-32", weights="random", input_size=64, **options)


def test_prompt_sentences(vit):
    tokens = M.prompt_tokens(vit.tokenizer, 12)
    x = " ".join(["X"] * 12)
    assert torch.equal(tokens, vit.tokenizer([f"{x} object.", f"{x} damaged object."]))
    assert (tokens[:, 1:13] == vit.tokenizer(["X"])[0, 1]).all()  # one token per context vector
    assert tokens.argmax(dim=-1).tolist() == [15, 16]  # the end-of-text token pooled


def test_text_forward_is_clips_with_the_learned_tokens_put_in(vit):
    model = vit.model
    method = AC.AnomalyCLIP(checkpoint="untrained", init_seed=3)
    method.bind(vit)
    prompts, tokens = method.learned, method._tokens
    assert prompts.ctx.shape == (2, 12, 512) and prompts.deep.shape == (8, 4, 512)

    # open_clip's own encode_text, with the context (block 1's input, after the position
    # embedding) and the deep prompts (inputs of blocks 2..9, positions 1..4) put in by hooks
    def put_in(index):
        def hook(module, args, kwargs):
            x = args[0].clone()
            if index == 0:
                x[:, 1:13] = prompts.ctx + model.positional_embedding[1:13]
            else:
                x[:, 1:5] = prompts.deep[index - 1].half().float()  # rounded to fp16, as official
            return (x, *args[1:]), kwargs
        return hook

    handles = [model.transformer.resblocks[i].register_forward_pre_hook(put_in(i), with_kwargs=True) for i in range(9)]
    try:
        with torch.no_grad():
            want = model.encode_text(tokens)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        got = M.encode_prompts(model, tokens, prompts)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(method.text(), F.normalize(want, dim=-1).T, rtol=1e-4, atol=1e-5)
    assert method.text().shape == (512, 2)

    # no deep prompts and the X embeddings as context: exactly CLIP's text embedding of the sentences
    plain = M.ObjectAgnosticPrompts(512, deep_depth=1)
    plain.ctx.data = model.token_embedding(tokens)[:, 1:13].detach()
    with torch.no_grad():
        torch.testing.assert_close(M.encode_prompts(model, tokens, plain), model.encode_text(tokens),
                                   rtol=1e-4, atol=1e-5)


def _images(n=3):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (70, 60, 3), dtype=np.uint8) for _ in range(n)]


def test_shapes_and_round_trip_on_a_random_vit_b32(vit, tmp_path):
    method = METHODS.create("anomalyclip", checkpoint="untrained", init_seed=5)
    method.bind(vit)
    assert method.layers == ("dpam.block3", "dpam.block6", "dpam.block9", "dpam.block12")
    features = vit.features(vit.preprocess(_images()))
    out = method.score(features)
    assert out.maps.shape == (3, 2, 2) and out.image_scores.shape == (3,)
    assert out.maps.min() >= 0 and out.maps.max() <= 4 and ((out.image_scores > 0) & (out.image_scores < 1)).all()
    path = method.save(tmp_path / "prompts.pt")
    loaded = METHODS.create("anomalyclip", checkpoint=str(path), init_seed=9)  # the file wins over the init
    loaded.bind(vit)
    again = loaded.score(features)
    assert torch.equal(again.maps, out.maps) and torch.equal(again.image_scores, out.image_scores)
    assert loaded.info.settings["checkpoint_source"] == "bench"
    other = METHODS.create("anomalyclip", checkpoint="untrained", init_seed=9)
    other.bind(vit)
    assert not torch.equal(other.learned.ctx, loaded.learned.ctx)


def test_train_reduces_its_loss(vit, synthetic_tiles, tmp_path):
    root = synthetic_tiles
    method = METHODS.create("anomalyclip", checkpoint="untrained")
    frozen = vit.model.token_embedding.weight.clone()
    saved = tmp_path / "trained.pt"
    losses = train(method, vit, root, epochs=8, save=saved)
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)  # 8 images, batch 8: 1 step per epoch
    assert losses[-1] < 0.9 * losses[0] and min(losses[4:]) < min(losses[:4])
    assert torch.equal(vit.model.token_embedding.weight, frozen) and not method.learned.ctx.requires_grad
    features = vit.features(vit.preprocess(_images()))
    reloaded = METHODS.create("anomalyclip", checkpoint=str(saved))
    reloaded.bind(vit)
    assert torch.equal(reloaded.score(features).maps, method.score(features).maps)
    assert reloaded.provenance["trained"]["steps"] == 8
    assert len(train(method, vit, root, max_steps=1)) == 1


def test_bench_run_smoke(synthetic_tiles, tmp_path):
    out = tmp_path / "out"
    assert_runs("anomalyclip", synthetic_tiles, out)  # random weights: untrained prompts by default
    assert_missing_weights_named("anomalyclip", synthetic_tiles, out, tmp_path / "epoch_15.pth",
                                 "anomalyclip.train.train")


# --------------------------------------------------------------------------- checkpoints


class OfficialPromptLearner(nn.Module):
    """The parameter and buffer names and shapes of the official ``AnomalyCLIP_PromptLearner``."""

    def __init__(self, width=768, n_ctx=12, depth=9, t_n_ctx=4):
        super().__init__()
        self.ctx_pos = nn.Parameter(torch.randn(1, 1, n_ctx, width))
        self.ctx_neg = nn.Parameter(torch.randn(1, 1, n_ctx, width))
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.randn(t_n_ctx, width)) for _ in range(depth - 1)])
        self.compound_prompt_projections = nn.ModuleList([nn.Linear(width, 896) for _ in range(depth - 1)])
        for sign in ("pos", "neg"):
            self.register_buffer(f"token_prefix_{sign}", torch.randn(1, 1, 1, width))
            self.register_buffer(f"token_suffix_{sign}", torch.randn(1, 1, 77 - 1 - n_ctx, width))
            self.register_buffer(f"tokenized_prompts_{sign}", torch.zeros(1, 1, 77, dtype=torch.int))


def test_official_checkpoint_key_mapping(tmp_path):
    official = OfficialPromptLearner().state_dict()
    assert {k for k in official if not k.startswith("compound_prompt_projections.")} == {
        "ctx_pos", "ctx_neg", *(f"compound_prompts_text.{i}" for i in range(8)),
        "token_prefix_pos", "token_suffix_pos", "tokenized_prompts_pos",
        "token_prefix_neg", "token_suffix_neg", "tokenized_prompts_neg"}
    assert official["compound_prompt_projections.7.weight"].shape == (896, 768)
    assert official["token_suffix_pos"].shape == (1, 1, 64, 768)
    path = tmp_path / "epoch_15.pth"
    torch.save({"prompt_learner": official}, path)
    method = METHODS.create("anomalyclip", checkpoint=str(path))
    method.bind(FakeClip(width=768))
    assert torch.equal(method.learned.ctx[0], official["ctx_pos"][0, 0])
    assert torch.equal(method.learned.ctx[1], official["ctx_neg"][0, 0])
    for i in range(8):
        assert torch.equal(method.learned.deep[i], official[f"compound_prompts_text.{i}"])
    assert method.info.settings["checkpoint_source"] == "official"
    torch.save(official, tmp_path / "bare.pth")  # a bare state dict with the official names
    bare = METHODS.create("anomalyclip", checkpoint=str(tmp_path / "bare.pth"))
    bare.bind(FakeClip(width=768))
    assert torch.equal(bare.learned.deep[7], official["compound_prompts_text.7"])


def _without(state, key):
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("make, needle", [
    (lambda: {"prompt_learner": OfficialPromptLearner(width=512).state_dict()}, "shape"),  # another CLIP
    (lambda: {"prompt_learner": OfficialPromptLearner(depth=5).state_dict()}, "deep has shape"),
    (lambda: {"prompt_learner": _without(OfficialPromptLearner().state_dict(), "ctx_neg")}, "no ctx_neg"),
    (lambda: {"something": torch.zeros(2)}, "not an AnomalyCLIP prompt checkpoint"),
    (lambda: {"format": AC.FORMAT, "version": 2, "state_dict": {}}, "format version"),
])
def test_incompatible_checkpoints_are_weights_errors_naming_the_file(tmp_path, make, needle):
    path = tmp_path / "prompts.pth"
    torch.save(make(), path)
    with pytest.raises(WeightsError, match=needle) as info:
        METHODS.create("anomalyclip", checkpoint=str(path)).bind(FakeClip(width=768))
    assert str(path) in str(info.value)


def test_unreadable_missing_or_absent_prompts_are_weights_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("not a torch file")
    with pytest.raises(WeightsError, match="torch.load") as info:
        METHODS.create("anomalyclip", checkpoint=str(junk)).bind(FakeClip())
    assert str(junk) in str(info.value)
    missing = tmp_path / "nope" / "epoch_15.pth"
    with pytest.raises(WeightsError, match="not found") as info:
        METHODS.create("anomalyclip", checkpoint=str(missing)).bind(FakeClip())
    assert str(missing) in str(info.value)
    clip = FakeClip()
    clip.weights = "openai"
    with pytest.raises(WeightsError) as info:
        METHODS.create("anomalyclip").bind(clip)
    for needle in ("official", "9_12_4_multiscale/epoch_15.pth", "9_12_4_multiscale_visa/epoch_15.pth",
                   "anomalyclip.train.train", "method_options.anomalyclip.checkpoint", "untrained"):
        assert needle in str(info.value), needle
    method = METHODS.create("anomalyclip")
    method.bind(FakeClip())  # --weights random: a smoke run with untrained prompts
    assert method.info.settings["checkpoint"] == "untrained"


def test_backbone_and_option_errors_are_config_errors():
    with pytest.raises(ConfigError, match="open_clip ViT"):
        METHODS.create("anomalyclip", checkpoint="untrained").bind(TinyBackbone())
    with pytest.raises(ConfigError, match="dpam"):
        METHODS.create("anomalyclip", checkpoint="untrained").bind(FakeClip(dpam=False))
    with pytest.raises(ConfigError, match="exceeds the 4 text blocks"):
        METHODS.create("anomalyclip", checkpoint="untrained").bind(FakeClip(text_blocks=4))
    with pytest.raises(ConfigError, match="bind"):
        METHODS.create("anomalyclip", checkpoint="untrained").score(_features())
    with pytest.raises(ConfigError, match="prompt_length"):
        METHODS.create("anomalyclip", prompt_length=0)
    method = bound_fake()
    with pytest.raises(ConfigError, match="dpam.embedding"):
        method.score(FeatureSet({"dpam.block1": torch.zeros(1, 2, 2, 2), "dpam.block2": torch.zeros(1, 2, 2, 2)},
                                torch.zeros(1, 2)))


def test_info_and_registration():
    method = METHODS.create("anomalyclip")
    info = method.info
    assert_learned_clip_info(info, "2310.18961")
    assert method.backbone_options("ViT-L-14-336") == {
        "layers": ("block6", "block12", "block18", "block24"), "input_size": 518, "precision": "fp32",
        "extras": {DPAM: {"start": "block6"}}}
    assert method.backbone_options("ViT-B-16") == {"precision": "fp32", "extras": {DPAM: {}}}
    assert method.backbone_options("efficientnet_lite0") == {}
    assert info.settings["temperature"] == 0.07 and info.settings["deep_depth"] == 9
    assert "sigma 4" in info.deviations and "anomalyclip" in METHODS.resolve("all")
