"""VCP-CLIP (bench/methods/vcpclip/): Pre-VCP, Post-VCP, the prompted text tower, the maps and image
scores pinned against hand computations (loops, the official placeholder construction), the
official checkpoint's key mapping on a fabricated state dict, our own format, the errors, the
training augmentation and training, and a `bench run` smoke test on a random ViT-B-32.

Most checks use a tiny open_clip architecture registered for this module (4-block image tower of
width 64 at 32 px, a 3-block text tower of width 32 = the embedding dim, as VCP-CLIP requires).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bench.backbones.openclip import OpenClipBackbone
from bench.errors import ConfigError, WeightsError
from bench.methods import vcpclip as V
from bench.methods.vcpclip import model as M
from bench.methods.vcpclip.embedding import VcpEmbedding
from bench.methods.vcpclip.train import augment, train
from bench.records import FeatureSet
from bench.registry import METHODS
from clip_helpers import assert_learned_clip_info, assert_missing_weights_named, assert_runs
from fakes import TinyBackbone, registered_tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "vcp-test-tiny"


@pytest.fixture(scope="module")
def tiny():
    """A random tiny CLIP with the options VCP-CLIP asks of every open_clip backbone (text width = embedding dim)."""
    with registered_tiny_vit(TINY, text_layers=3) as name:
        yield OpenClipBackbone(name, weights="random", quick_gelu=False, extras={VcpEmbedding: {}})


def _features(backbone, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return backbone.features(backbone.preprocess([rng.integers(0, 256, (40, 44, 3), dtype=np.uint8) for _ in range(n)]))


def _bound(backbone, **options) -> V.VCPCLIP:
    method = METHODS.create("vcpclip", checkpoint="untrained", **options)
    method.bind(backbone)
    return method


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


# --------------------------------------------------------------------------- Pre-VCP and Post-VCP


def test_pre_vcp_is_the_query_plus_a_three_tap_convolution_by_hand():
    torch.manual_seed(1)
    pre = M.PreVCP(dim=5)
    e = torch.randn(2, 5) * 7  # unnormalised, as the official image embedding
    out = _np(pre(e))
    w, b, q, x = _np(pre.conv.weight), _np(pre.conv.bias), _np(pre.query), _np(e)
    assert out.shape == (2, 2, 5)
    for i in range(2):
        for j in range(2):
            for d in range(5):
                conv = b[j] + sum(w[j, 0, t] * x[i, d + t - 1] for t in range(3) if 0 <= d + t - 1 < 5)
                assert out[i, j, d] == pytest.approx(q[0, j, d] + conv, abs=1e-5)
    assert pre.log_scale.exp().item() == pytest.approx(1 / 0.07)


def hand_post(post: M.PostVCP, text: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Official Zero_Parameter for one image: (S, D) text, (P, C) patches → (S, C), by loops."""
    wq, bq, wk, bk, wv, bv, wo, bo = (_np(t) for t in (post.q.weight, post.q.bias, post.k.weight, post.k.bias,
                                                       post.v.weight, post.v.bias, post.out.weight, post.out.bias))
    q = [wq @ t + bq for t in text]
    k = [wk @ x + bk for x in patches]
    v = [wv @ x + bv for x in patches]
    c = len(bo) // post.heads
    out = []
    for s in range(len(text)):
        heads = []
        for h in range(post.heads):
            part = slice(h * c, (h + 1) * c)
            weights = _softmax([q[s][part] @ k[p][part] for p in range(len(patches))])  # no 1/sqrt(c)
            heads.append(sum(weights[p] * v[p][part] for p in range(len(patches))))
        o = wo @ np.concatenate(heads) + bo
        out.append(o / np.linalg.norm(o))
    return np.stack(out)


def test_post_vcp_attention_by_hand():
    torch.manual_seed(2)
    post = M.PostVCP(text_dim=3, width=16)
    text = torch.randn(2, 2, 3)
    patches = torch.randn(2, 5, 16)
    out = _np(post(text, patches))
    for i in range(2):
        assert np.allclose(out[i], hand_post(post, _np(text[i]), _np(patches[i])), atol=1e-5)
    assert np.allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- the prompted text tower


def official_text(backbone, prompts: M.DeepPrompts, prefix: str, context: torch.Tensor) -> torch.Tensor:
    """The official encode_text for one image and one prompt, with a placeholder word for <|class|>."""
    model = backbone.model
    assert model.transformer.batch_first  # open_clip >= 2.24 runs its blocks batch-first
    placeholder = int(backbone.tokenizer(["dog"])[0, 1])
    tokens = backbone.tokenizer([f"{prefix} dog"])[0]
    pos = int((tokens == placeholder).nonzero()[0, 0])
    r = context.shape[0]
    x = model.token_embedding(tokens)
    x = torch.cat([x[:pos], context, x[pos + 1: 77 - r + 1]]) + model.positional_embedding
    x = torch.cat([x[:1], prompts.proj(prompts.shallow[0]), x[1:-1]])
    for i, block in enumerate(model.transformer.resblocks):
        if i >= 1:
            x = torch.cat([x[:1], prompts.proj(prompts.deep[i - 1]), x[2:]])
        x = block(x[None], attn_mask=model.attn_mask)[0]
    x = model.ln_final(prompts.norm(torch.cat([x[:1], x[2:]])))
    eot = int((tokens == tokens.max()).nonzero()[0, 0])
    z = x[eot + r - 1] @ model.text_projection
    return z / z.norm()


def test_prompted_text_matches_the_official_placeholder_construction(tiny):
    method = _bound(tiny, init_seed=3)
    params = method.learned
    embedding = _features(tiny).layers["vcp_embedding"].flatten(1)
    text = method.text(embedding)
    assert text.shape == (2, 2, 32)
    context = params.pre(embedding)
    with torch.no_grad():
        for i in range(2):
            for c, prefix in enumerate(("a photo of a good", "a photo of a damaged")):
                expected = official_text(tiny, params.prompts, prefix, context[i])
                assert torch.allclose(text[i, c], expected, atol=1e-5), (i, c)
    assert not torch.allclose(text[0], text[1], atol=1e-3)  # the image's context changes its prompts
    # the prompt dropout acts in training mode only
    assert torch.equal(method.text(embedding), text)
    params.prompts.train()
    try:
        assert not torch.allclose(method.text(embedding), text)
    finally:
        params.prompts.eval()


# --------------------------------------------------------------------------- maps and scores


def _upsample_matrix(h: int, size: int) -> np.ndarray:
    """Bilinear, align_corners=True: output i samples input i·(h-1)/(size-1)."""
    u = np.zeros((size, h))
    for i in range(size):
        y = i * (h - 1) / (size - 1)
        y0 = min(math.floor(y), h - 2)
        u[i, y0] += 1 - (y - y0)
        u[i, y0 + 1] += y - y0
    return u


def hand_branch_logits(params, tokens: np.ndarray, text: np.ndarray, layer: str):
    """(2, h, w) pre and post logits of one image and layer, patch by patch."""
    _, h, w = tokens.shape
    a, b = _np(params.adapters.linears[layer].weight), _np(params.adapters.linears[layer].bias)
    t1, t2 = math.exp(params.pre.log_scale.item()), math.exp(params.post.log_scale.item())
    patches = [tokens[:, i, j] / np.linalg.norm(tokens[:, i, j]) for i in range(h) for j in range(w)]
    adjusted = hand_post(params.post, text, np.stack(patches))
    pre, post = np.zeros((2, h, w)), np.zeros((2, h, w))
    for n, x in enumerate(patches):
        i, j = divmod(n, w)
        z = a @ tokens[:, i, j] + b
        z /= np.linalg.norm(z)
        for k in range(2):
            pre[k, i, j] = t1 * z @ text[k]
            post[k, i, j] = t2 * x @ adjusted[k]
    return pre, post


def test_maps_and_image_scores_by_hand(tiny, monkeypatch):
    monkeypatch.setattr(V, "TOP_K", 10)
    method = _bound(tiny, init_seed=4)
    params = method.learned
    features = _features(tiny)
    text = _np(method.text(features.layers["vcp_embedding"].flatten(1)))
    out = method.score(features)
    size, u = tiny.input_size, _upsample_matrix(4, tiny.input_size)
    assert out.maps.shape == (2, 4, 4) and out.evaluated.shape == (2, size, size)
    for i in range(2):
        coarse = {"pre": [], "post": []}
        fine = {"pre": [], "post": []}
        for layer in ("block1", "block2", "block3", "block4"):
            logits = hand_branch_logits(params, _np(features.layers[layer][i]), text[i], layer)
            for name, z in zip(("pre", "post"), logits):
                coarse[name].append(1 / (1 + np.exp(z[0] - z[1])))  # softmax over two classes
                up = np.stack([u @ z[k] @ u.T for k in range(2)])
                fine[name].append(1 / (1 + np.exp(up[0] - up[1])))
        pre, post = np.mean(coarse["pre"], axis=0), np.mean(coarse["post"], axis=0)
        assert np.allclose(_np(out.maps[i]), 0.2 * pre + 0.8 * post, atol=1e-5)
        pre, post = np.mean(fine["pre"], axis=0), np.mean(fine["post"], axis=0)
        # test.py: the fused input-size map smoothed by scipy's gaussian_filter, sigma 8 (min-max: the protocol's)
        smoothed = gaussian_filter((0.2 * pre + 0.8 * post).astype(np.float32), sigma=8)
        assert np.allclose(_np(out.evaluated[i]), smoothed, atol=1e-5)
        score = np.sort(pre.ravel())[-10:].mean() + np.sort(post.ravel())[-10:].mean()
        assert out.image_scores[i].item() == pytest.approx(score, abs=1e-5)
    # per-image: the reference set is ignored
    assert torch.equal(method.score(features, reference=features.select([0])).evaluated, out.evaluated)


def test_top_mean_takes_every_pixel_when_there_are_fewer():
    maps = torch.tensor([[[1.0, 5.0], [3.0, 2.0]]])
    assert M.top_mean(maps, 2).item() == pytest.approx(4.0)
    assert M.top_mean(maps, 2000).item() == pytest.approx(2.75)


# --------------------------------------------------------------------------- checkpoints


def _official_checkpoint(count: int = 4, fc_shape=(32, 64)) -> dict:
    """Official key names with the tiny backbone's shapes (r = 2, n = 1, 3 text blocks)."""
    g = torch.Generator().manual_seed(5)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    conv = {f"{name}.weight": rand(64, dim, 1) for name, dim in
            (("q_proj_pre", 32), ("k_proj_pre_1", 64), ("v_proj_pre_1", 64), ("proj_post_t", 64))}
    conv.update({f"{name}.bias": rand(64) for name in ("q_proj_pre", "k_proj_pre_1", "v_proj_pre_1", "proj_post_t")})
    return {
        "trainable_linearlayer": {**{f"fc.{i}.weight": rand(*fc_shape) for i in range(count)},
                                  **{f"fc.{i}.bias": rand(fc_shape[0]) for i in range(count)}},
        "New_Lan_Embed": {"prompt_query": rand(1, 2, 32), "prompt_linear1.fc.weight": rand(2, 1, 3),
                          "prompt_linear1.fc.bias": rand(2), "prompt_temp": torch.tensor(2.5)},
        "Zero_try": {**conv, "prompt_temp_l1": torch.tensor(3.5)},
        "prompt_embeddings": rand(1, 1, 32), "deep_prompt_embeddings": rand(2, 1, 32),
        "prompt_proj.weight": rand(32, 32), "prompt_proj.bias": rand(32),
        "prompt_norm.weight": rand(32), "prompt_norm.bias": rand(32),
        "prompt_text_projection": rand(32, 32),  # unused by the official forward
    }


def test_official_checkpoint_keys_map_to_ours(tiny, tmp_path):
    raw = _official_checkpoint()
    path = tmp_path / "train_visa.pth"
    torch.save(raw, path)
    method = METHODS.create("vcpclip", checkpoint=str(path))
    method.bind(tiny)
    p = method.learned
    for i, layer in enumerate(("block1", "block2", "block3", "block4")):
        assert torch.equal(p.adapters.linears[layer].weight, raw["trainable_linearlayer"][f"fc.{i}.weight"])
        assert torch.equal(p.adapters.linears[layer].bias, raw["trainable_linearlayer"][f"fc.{i}.bias"])
    pre = raw["New_Lan_Embed"]
    assert torch.equal(p.pre.query, pre["prompt_query"])
    assert torch.equal(p.pre.conv.weight, pre["prompt_linear1.fc.weight"])
    assert torch.equal(p.pre.conv.bias, pre["prompt_linear1.fc.bias"])
    assert p.pre.log_scale.item() == 2.5 and p.post.log_scale.item() == 3.5
    post = raw["Zero_try"]
    for official, ours in (("q_proj_pre", p.post.q), ("k_proj_pre_1", p.post.k), ("v_proj_pre_1", p.post.v),
                           ("proj_post_t", p.post.out)):
        assert torch.equal(ours.weight, post[f"{official}.weight"][:, :, 0])
        assert torch.equal(ours.bias, post[f"{official}.bias"])
    assert torch.equal(p.prompts.shallow, raw["prompt_embeddings"])
    assert torch.equal(p.prompts.deep, raw["deep_prompt_embeddings"])
    for part in ("proj", "norm"):
        for kind in ("weight", "bias"):
            assert torch.equal(getattr(getattr(p.prompts, part), kind), raw[f"prompt_{part}.{kind}"])
    assert method.info.settings["checkpoint_source"] == "official"
    # a Conv1d with kernel 1 is the linear layer we load it into
    conv = torch.nn.Conv1d(32, 64, 1)
    conv.weight.data, conv.bias.data = post["q_proj_pre.weight"], post["q_proj_pre.bias"]
    t = torch.randn(3, 2, 32)
    assert torch.allclose(conv(t.transpose(1, 2)).transpose(1, 2), p.post.q(t), atol=1e-5)


def _without(raw: dict, key: str) -> dict:
    return {k: v for k, v in raw.items() if k != key}


@pytest.mark.parametrize("make, needle", [
    (lambda: _official_checkpoint(fc_shape=(32, 48)), "shape"),
    (lambda: _official_checkpoint(count=3), "3 linear layer"),
    (lambda: _without(_official_checkpoint(), "prompt_norm.bias"), "prompt_norm.bias"),
    (lambda: _without(_official_checkpoint(), "Zero_try"), "not a VCP-CLIP checkpoint"),
    (lambda: {"format": V.FORMAT, "version": 1, "layers": ["block1"], "state_dict": {}}, "trained on layers"),
])
def test_incompatible_checkpoints_are_weights_errors_naming_the_file(tiny, tmp_path, make, needle):
    path = tmp_path / "vcp.pth"
    torch.save(make(), path)
    with pytest.raises(WeightsError, match=needle) as info:
        METHODS.create("vcpclip", checkpoint=str(path)).bind(tiny)
    assert str(path) in str(info.value)


def test_our_checkpoint_round_trip(tiny, tmp_path):
    method = _bound(tiny, init_seed=6)
    features = _features(tiny)
    path = method.save(tmp_path / "vcp.pt")
    loaded = METHODS.create("vcpclip", checkpoint=str(path), init_seed=9)  # the file wins over the init
    loaded.bind(tiny)
    assert torch.equal(loaded.score(features).maps, method.score(features).maps)
    other = _bound(tiny, init_seed=9)
    assert not torch.equal(other.learned.pre.query, loaded.learned.pre.query)
    assert loaded.info.settings["checkpoint_source"] == "bench"


def test_missing_checkpoint_is_a_weights_error_naming_both_ways(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "weights", "openai")
    with pytest.raises(WeightsError) as info:
        METHODS.create("vcpclip").bind(tiny)
    for needle in ("train_visa.pth", "train_mvtec.pth", "vcpclip.train.train", "method_options.vcpclip.checkpoint",
                   "untrained"):
        assert needle in str(info.value), needle
    monkeypatch.setattr(tiny, "weights", "random")  # --weights random: a smoke run, untrained
    method = METHODS.create("vcpclip")
    method.bind(tiny)
    assert method.info.settings["checkpoint"] == "untrained"


def test_backbone_requirements_and_options_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="open_clip"):
        METHODS.create("vcpclip", checkpoint="untrained").bind(TinyBackbone())
    plain = OpenClipBackbone(TINY, weights="random")
    with pytest.raises(ConfigError, match="vcp_embedding"):
        METHODS.create("vcpclip", checkpoint="untrained").bind(plain)
    with pytest.raises(ConfigError, match="bind"):
        METHODS.create("vcpclip", checkpoint="untrained").score(_features(tiny))
    method = _bound(tiny)
    with pytest.raises(ConfigError, match="vcp_embedding"):
        features = _features(tiny)
        method.score(FeatureSet({k: v for k, v in features.layers.items() if k != "vcp_embedding"}, features.embedding))


def test_info_registration_and_backbone_options():
    method = METHODS.create("vcpclip", checkpoint="untrained")
    info = method.info
    assert_learned_clip_info(info, "2407.12276")
    assert method.backbone_options("ViT-L-14-336") == {
        "quick_gelu": False, "extras": {VcpEmbedding: {}},
        "layers": ("block6", "block12", "block18", "block24"), "input_size": 518}
    assert method.backbone_options("ViT-B-32") == {"quick_gelu": False, "extras": {VcpEmbedding: {}}}
    assert METHODS.create("vcpclip", quick_gelu=True).backbone_options("ViT-B-16")["quick_gelu"] is True
    assert method.backbone_options("efficientnet-lite0") == {}
    assert "vcpclip" in METHODS.resolve("all")
    assert "sigma 8" in info.deviations and "'none' is scored on the official map" in info.deviations


# --------------------------------------------------------------------------- training


class Scripted:
    """A stand-in generator: ``random()`` gates each augmentation step, other draws are given."""

    def __init__(self, gates, **draws):
        self.gates = list(gates)
        self.draws = {name: list(values) for name, values in draws.items()}

    def random(self):
        return self.gates.pop(0)

    def uniform(self, low, high):
        return self.draws["uniform"].pop(0)

    def integers(self, n):
        return self.draws["integers"].pop(0)


OFF, ON = 0.9, 0.1


def test_augment_moves_image_and_mask_together_and_adjusts_brightness_by_hand():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    mask = (rng.random((6, 6)) > 0.5).astype(np.float32)
    out, m = augment(image, mask, Scripted([OFF, ON, OFF, OFF, OFF], integers=[1]))  # RandomRotate90, k=1
    assert np.array_equal(out, np.rot90(image, 1)) and np.array_equal(m, np.rot90(mask, 1))
    out, m = augment(image, mask, Scripted([ON, OFF, OFF, OFF, OFF], uniform=[90.0]))  # Rotate by 90°
    assert np.array_equal(out, np.rot90(image, 1)) and np.array_equal(m, np.rot90(mask, 1))
    out, m = augment(image, mask, Scripted([OFF, OFF, ON, OFF, OFF], uniform=[0.1, -0.05]))  # brightness/contrast
    expected = np.clip(np.rint(image * 1.1 - 0.05 * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(out, expected) and np.array_equal(m, mask)
    for seed in range(10):  # whatever is drawn: same shapes, uint8 image, binary mask
        out, m = augment(image, mask, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8 and m.shape == mask.shape
        assert set(np.unique(m)) <= {0.0, 1.0}


def test_temperatures_train_at_their_own_rate(tiny, synthetic_tiles):
    method = _bound(tiny, init_seed=7)
    before = {k: v.clone() for k, v in method.learned.state_dict().items()}
    train(method, tiny, synthetic_tiles, lr=1e-12, batch_size=4, max_steps=1, augmentation=False)
    after = method.learned.state_dict()
    for key in ("pre.log_scale", "post.log_scale"):  # Adam's first step moves each weight by ~lr
        assert abs((after[key] - before[key]).item()) == pytest.approx(0.01, rel=0.01)
    assert max((after[k] - before[k]).abs().max().item() for k in before if "log_scale" not in k) < 1e-9


def test_train_reduces_its_loss_and_saves(tiny, synthetic_tiles, tmp_path):
    method = _bound(tiny, init_seed=8)
    with pytest.raises(ConfigError, match="lr"):
        train(method, tiny, synthetic_tiles)  # no official lr for the synthetic set
    saved = tmp_path / "vcp.pt"
    losses = train(method, tiny, synthetic_tiles, epochs=20, lr=1e-2, batch_size=8, augmentation=False,
                         save=saved)
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.75 * losses[0] and min(losses[10:]) < min(losses[:10])
    features = _features(tiny)
    reloaded = METHODS.create("vcpclip", checkpoint=str(saved))
    reloaded.bind(tiny)
    assert torch.equal(reloaded.score(features).maps, method.score(features).maps)
    assert reloaded.provenance["source"] == "bench"
    # the official augmentations and anomalous-image mosaics run too
    more = train(method, tiny, synthetic_tiles, epochs=1, lr=1e-3, batch_size=4, mosaic_rate=1.0)
    assert len(more) == 2 and all(math.isfinite(v) for v in more)


# --------------------------------------------------------------------------- bench run


def test_bench_run_smoke(synthetic_tiles, tmp_path):
    out = tmp_path / "out"
    assert_runs("vcpclip", synthetic_tiles, out)  # random weights: untrained parameters by default
    assert_missing_weights_named("vcpclip", synthetic_tiles, out, tmp_path / "train_visa.pth",
                                 "vcpclip.train.train")
