"""AdaCLIP's prompted visual forward (bench/methods/adaclip/visual.py): the forward
pinned against a hand loop over open_clip's blocks, per-image dynamic prompts, gradients for
training, checkpoints (the official key names included) and the feature-cache identity.

A tiny ViT registered with open_clip for this module (4 blocks of width 64, 32 px, patch 8, a
2-block text tower) keeps every check in milliseconds.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from bench.backbones.openclip import OpenClipBackbone
from bench.cache import backbone_fingerprint
from bench.errors import ConfigError, WeightsError
from bench.methods.adaclip import checkpoint as C
from bench.methods.adaclip import visual as AP
from fakes import registered_tiny_vit

TINY = "bench-test-adaclip-vit"
LENGTH, DEPTH = 2, 3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_arch():
    with registered_tiny_vit(TINY, text_layers=2) as name:
        yield name


def make(arch: str, **options) -> OpenClipBackbone:
    extra = {"length": LENGTH, "depth": DEPTH, **options}
    return OpenClipBackbone(arch, weights="random", layers=("block2", "block4"), extras={AP.AdaCLIPPrompts: extra})


@pytest.fixture(scope="module")
def backbone(tiny_arch):
    return make(tiny_arch, init_seed=3)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def _official_state(width=64, embed=32, text=32, length=LENGTH, depth=DEPTH, layers=2, seed=0) -> dict:
    """A state dict with the official trainer's key names and shapes (AdaCLIP_Trainer.save)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    state = {}
    for j in range(depth):
        state[f"clip_model.visual_prompter.static_prompts.{j}"] = r(length, width)
        state[f"clip_model.text_prompter.static_prompts.{j}"] = r(length, text)
    for i in range(length):
        state[f"clip_model.dynamic_visual_prompt_generator.head.{i}.weight"] = r(width, embed)
        state[f"clip_model.dynamic_visual_prompt_generator.head.{i}.bias"] = r(width)
        state[f"clip_model.dynamic_text_prompt_generator.head.{i}.weight"] = r(text, embed)
        state[f"clip_model.dynamic_text_prompt_generator.head.{i}.bias"] = r(text)
    for i in range(layers):
        state[f"clip_model.patch_token_layer.head.{i}.weight"] = r(embed, width)
        state[f"clip_model.patch_token_layer.head.{i}.bias"] = r(embed)
    state["clip_model.cls_token_layer.head.0.weight"] = r(embed, embed)
    state["clip_model.cls_token_layer.head.0.bias"] = r(embed)
    return state


# --------------------------------------------------------------------------- the forward


def hand_forward(backbone, x):
    """The official PromptLayer.forward_visual / encode_image, written out with open_clip's pieces."""
    model, prompts = backbone.model, backbone.extras[AP.NAME].prompts
    visual = model.visual
    with torch.no_grad():
        e = model.encode_image(x)  # frozen, unnormalised
        dynamic = torch.stack([e @ prompts.generator[i].weight.T + prompts.generator[i].bias for i in range(LENGTH)], 1)
        patches = visual.conv1(x).flatten(2).transpose(1, 2)  # (B, 16, 64)
        cls = visual.class_embedding.expand(len(x), 1, -1)
        h = visual.ln_pre(torch.cat([cls, patches], 1) + visual.positional_embedding)
        taps = {}
        for j, block in enumerate(visual.transformer.resblocks):
            if j == 0:
                h = torch.cat([h, (prompts.static[0] + dynamic).half().float()], 1)  # appended after class + 16 patches
            elif j < DEPTH:
                h = torch.cat([h[:, :17], (prompts.static[j] + dynamic).half().float()], 1)  # the last LENGTH replaced
            assert h.shape[1] == 17 + LENGTH
            h = block(h)
            taps[j + 1] = h[:, 1:17]
        image = visual.ln_post(h[:, 0]) @ visual.proj
    return taps, image, e


def test_the_prompted_forward_is_the_official_one(backbone):
    extra = backbone.extras[AP.NAME]
    assert extra.channels == {"adaclip_block2": 64, "adaclip_block4": 64, "adaclip_image": 32, "adaclip_clip_image": 32}
    assert backbone.extra_channels == extra.channels
    x = backbone.preprocess(_images(3))
    features = backbone.features(x)
    taps, image, e = hand_forward(backbone, x)
    for block in (2, 4):
        grid = taps[block].reshape(3, 4, 4, 64).permute(0, 3, 1, 2)  # row-major patches, prompts stripped
        torch.testing.assert_close(features.layers[f"adaclip_block{block}"], grid)
    torch.testing.assert_close(features.layers["adaclip_image"], image[:, :, None, None])
    torch.testing.assert_close(features.layers["adaclip_clip_image"], e[:, :, None, None])
    # layers given deepest first: the extra's layers still come in the order it declares (cache check)
    reversed_layers = OpenClipBackbone(backbone.arch, weights="random", layers=("block4", "block2"),
                                       extras={AP.AdaCLIPPrompts: {"length": LENGTH, "depth": DEPTH}})
    produced = list(reversed_layers.features(x[:1]).layers)
    assert produced == list(reversed_layers.channels) + list(reversed_layers.extra_channels)
    # the prompts matter: the prompted tokens differ from the backbone's own
    assert (features.layers["adaclip_block4"] - features.layers["block4"]).abs().max() > 1e-3
    assert not features.layers["adaclip_image"].is_inference()


def test_dynamic_prompts_are_per_image(backbone):
    images = _images(3, seed=1)
    x = backbone.preprocess(images)
    together = backbone.features(x)
    alone = backbone.features(x[1:2])
    for name in backbone.extras[AP.NAME].channels:
        torch.testing.assert_close(together.layers[name][1:2], alone.layers[name], atol=1e-5, rtol=1e-5)


def test_compute_and_forward_share_the_code_and_gradients_reach_only_the_prompts(backbone):
    extra = backbone.extras[AP.NAME]
    x = backbone.preprocess(_images(2, seed=2))
    scored = backbone.features(x)  # inference mode, through compute
    extra.prompts.requires_grad_(True)
    try:
        out = extra.forward(x)
        for name, value in out.items():
            torch.testing.assert_close(value, scored.layers[name])
        (out["adaclip_block4"].pow(2).mean() + out["adaclip_image"].sum()).backward()
        for j in range(DEPTH):
            assert extra.prompts.static[j].grad.abs().sum() > 0, j
        assert all(layer.weight.grad.abs().sum() > 0 for layer in extra.prompts.generator)
        assert all(p.grad is None for p in backbone.model.parameters())  # the tower stays frozen
    finally:
        extra.prompts.requires_grad_(False).zero_grad(set_to_none=True)


def test_options_are_checked(tiny_arch):
    with pytest.raises(ConfigError, match="depth must be in 1..4"):
        make(tiny_arch, depth=5)
    with pytest.raises(ConfigError, match="depth must be in 1..4"):
        make(tiny_arch, depth=0)
    with pytest.raises(ConfigError, match="length must be >= 1"):
        make(tiny_arch, length=0)


# --------------------------------------------------------------------------- checkpoints and identity


def test_official_checkpoint_keys_map_to_ours(tiny_arch, tmp_path):
    raw = _official_state()
    path = tmp_path / "pretrained_visa_clinicdb.pth"
    torch.save(raw, path)
    state, source = C.read_checkpoint(path)
    assert source == {"kind": "official"}
    assert torch.equal(state["visual.static.1"], raw["clip_model.visual_prompter.static_prompts.1"])
    generator = raw["clip_model.dynamic_visual_prompt_generator.head.0.weight"]
    assert torch.equal(state["visual.generator.0.weight"], generator)
    assert torch.equal(state["text.static.2"], raw["clip_model.text_prompter.static_prompts.2"])
    assert torch.equal(state["text.generator.1.bias"], raw["clip_model.dynamic_text_prompt_generator.head.1.bias"])
    assert torch.equal(state["patch.1.weight"], raw["clip_model.patch_token_layer.head.1.weight"])
    assert torch.equal(state["image.bias"], raw["clip_model.cls_token_layer.head.0.bias"])
    assert len(state) == len(raw)
    backbone = make(tiny_arch, checkpoint=str(path))
    prompts = backbone.extras[AP.NAME].prompts
    for j in range(DEPTH):
        torch.testing.assert_close(prompts.static[j], raw[f"clip_model.visual_prompter.static_prompts.{j}"])
    torch.testing.assert_close(prompts.generator[1].bias, raw["clip_model.dynamic_visual_prompt_generator.head.1.bias"])
    # a bare AdaCLIP state dict (no clip_model. prefix) reads the same
    torch.save({k.removeprefix("clip_model."): v for k, v in raw.items()}, tmp_path / "bare.pth")
    assert C.read_checkpoint(tmp_path / "bare.pth")[0].keys() == state.keys()


@pytest.mark.parametrize("make_state, needle", [
    (lambda: _official_state(width=48), "shape"),  # another backbone width
    (lambda: _official_state(length=3), "prompt length"),
    (lambda: _official_state(depth=2), "prompt length, prompting depth"),
    (lambda: {"something": torch.zeros(2)}, "not an AdaCLIP checkpoint"),
    (lambda: {"format": C.FORMAT, "version": 9, "state_dict": {}}, "format version 9"),
])
def test_incompatible_checkpoints_are_weights_errors_naming_the_file(tiny_arch, tmp_path, make_state, needle):
    path = tmp_path / "prompts.pth"
    torch.save(make_state(), path)
    with pytest.raises(WeightsError, match=needle) as info:
        make(tiny_arch, checkpoint=str(path))
    assert str(path) in str(info.value)


def test_missing_or_unreadable_files_are_weights_errors(tiny_arch, tmp_path):
    missing = tmp_path / "nope" / "pretrained_mvtec_colondb.pth"
    with pytest.raises(WeightsError, match="not found") as info:
        make(tiny_arch, checkpoint=str(missing))
    assert str(missing) in str(info.value) and "adaclip.train.train" in str(info.value)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a torch file")
    with pytest.raises(WeightsError, match="torch.load"):
        make(tiny_arch, checkpoint=str(junk))


def test_the_cache_identity_follows_the_checkpoint_content(tiny_arch, tmp_path):
    first, copy, second = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    torch.save(_official_state(seed=1), first)
    shutil.copy(first, copy)
    torch.save(_official_state(seed=2), second)
    a, b, c = (make(tiny_arch, checkpoint=str(p)) for p in (first, copy, second))
    assert a.identity()["extras"][AP.NAME]["parameters"] == {"checkpoint_sha256": AP.file_digest(first)}
    assert backbone_fingerprint(a) == backbone_fingerprint(b)  # same content, another path
    assert backbone_fingerprint(a) != backbone_fingerprint(c)
    untrained = make(tiny_arch, init_seed=3)
    assert untrained.identity()["extras"][AP.NAME]["parameters"] == {"untrained": 3}
    assert backbone_fingerprint(untrained) != backbone_fingerprint(make(tiny_arch, init_seed=4))
    assert backbone_fingerprint(untrained) != backbone_fingerprint(make(tiny_arch, init_seed=3, length=3))
    x = a.preprocess(_images(1))
    assert not torch.equal(a.features(x).layers["adaclip_block4"], c.features(x).layers["adaclip_block4"])
    # prompts changed in this process (training) get a digest of their values
    digest = C.parameters_digest(a.extras[AP.NAME].prompts)
    assert digest == C.parameters_digest(b.extras[AP.NAME].prompts) != C.parameters_digest(c.extras[AP.NAME].prompts)
