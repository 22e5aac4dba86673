"""open_clip ViT backbones (bench/backbones/openclip.py): random weights only, no network.

Most checks use a tiny ViT registered with open_clip for this module (4 blocks of width 64,
32 px, patch 8) so they run in milliseconds; the registered names are checked on ViT-B-32 at a
small input size, and once end to end through `bench run`.
"""
from __future__ import annotations

import inspect

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from bench.backbones import _clip_weights as weights
from bench.backbones import openclip as oc
from bench.errors import ConfigError, WeightsError
from bench.registry import BACKBONES, METHODS
from fakes import registered_tiny_vit

TINY = "bench-test-tiny-vit"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_arch():
    """A tiny ViT in open_clip's architecture registry for this module only."""
    with registered_tiny_vit(TINY) as name:
        yield name


@pytest.fixture(scope="module")
def tiny(tiny_arch):
    return oc.OpenClipBackbone(tiny_arch, weights="random")


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8) for _ in range(n)]


# --------------------------------------------------------------------------- layers and shapes


def test_layer_names_are_one_based_and_evenly_spaced_by_default():
    assert oc.default_layers(24) == ("block6", "block12", "block18", "block24")
    assert oc.default_layers(12) == ("block3", "block6", "block9", "block12")
    assert oc.parse_layer("block1", 12) == 0 and oc.parse_layer("block12", 12) == 11
    for bad in ("block0", "block13", "layer3", "3"):
        with pytest.raises(ConfigError, match="block1"):
            oc.parse_layer(bad, 12)


def test_features_are_the_blocks_patch_tokens_and_the_normalised_clip_embedding(tiny):
    assert tiny.layers == ("block1", "block2", "block3", "block4")
    assert tiny.input_size == 32 and tiny.grid == 4 and tiny.channels == {f"block{i}": 64 for i in range(1, 5)}
    x = tiny.preprocess(_images(3, 40))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    # reference: forward hooks on the residual blocks (open_clip 3.x is batch-first: (B, 1 + h·w, C))
    captured = {}
    hooks = [block.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o))
             for k, block in enumerate(tiny.model.visual.transformer.resblocks)]
    try:
        with torch.no_grad():
            expected_embedding = tiny.model.encode_image(x, normalize=True)
    finally:
        for hook in hooks:
            hook.remove()
    fs = tiny.features(x)
    assert list(fs.layers) == list(tiny.layers)
    for k in range(4):
        tokens = captured[k]
        assert tokens.shape == (3, 1 + 16, 64)
        grid = tokens[:, 1:].reshape(3, 4, 4, 64).permute(0, 3, 1, 2)  # class token dropped, row-major
        torch.testing.assert_close(fs.layers[f"block{k + 1}"], grid)
    torch.testing.assert_close(fs.embedding, expected_embedding)
    assert torch.allclose(fs.embedding.norm(dim=1), torch.ones(3))
    # ordinary tensors (a refiner may train on them), not inference tensors
    assert not fs.embedding.is_inference() and not fs.layers["block1"].is_inference()


def test_chosen_layers_keep_their_order(tiny_arch, tiny):
    backbone = oc.OpenClipBackbone(tiny_arch, weights="random", layers="block4, block2")
    assert backbone.layers == ("block4", "block2")
    x = tiny.preprocess(_images(2, 32))
    fs, full = backbone.features(x), tiny.features(x)
    assert list(fs.layers) == ["block4", "block2"]
    torch.testing.assert_close(fs.layers["block2"], full.layers["block2"])
    with pytest.raises(ConfigError, match="repeated"):
        oc.OpenClipBackbone(tiny_arch, weights="random", layers=("block2", "block2"))


def test_text_tower_and_token_projection(tiny):
    prompts = ["a photo of a flawless object", "a photo of a damaged object", "x"]
    text = tiny.encode_text(prompts)
    assert text.shape == (3, 32) and torch.allclose(text.norm(dim=1), torch.ones(3))
    raw = tiny.encode_text(prompts, normalize=False)  # open_clip's own encode_text output
    with torch.no_grad():
        torch.testing.assert_close(raw, tiny.model.encode_text(tiny.tokenizer(prompts)))
    torch.testing.assert_close(F.normalize(raw, dim=-1), text)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3), atol=1e-2)
    assert tiny.tokenizer(["a"]).shape == (1, 77)
    x = tiny.preprocess(_images(2, 32))
    fs = tiny.features(x)
    projected = tiny.project_tokens(fs.layers["block4"])
    assert projected.shape == (2, 32, 4, 4)
    visual = tiny.model.visual
    out = visual.forward_intermediates(x, indices=[3], normalize_intermediates=True)
    expected = (out["image_intermediates"][0].permute(0, 2, 3, 1) @ visual.proj).permute(0, 3, 1, 2)
    torch.testing.assert_close(projected, expected)
    tokens = fs.layers["block4"].clone().requires_grad_(True)
    tiny.project_tokens(tokens).sum().backward()  # gradients reach the tokens
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_position_embedding_is_resized_bicubically_when_a_checkpoint_loads_at_another_size(tiny_arch, tmp_path):
    source = oc.OpenClipBackbone(tiny_arch, weights="random", quick_gelu=False)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), checkpoint)
    big = oc.OpenClipBackbone(tiny_arch, weights=str(checkpoint), input_size=64, quick_gelu=False)
    assert big.input_size == 64 and big.grid == 8 and big.weights_file == checkpoint.resolve()
    old = source.model.visual.positional_embedding.detach()
    new = big.model.visual.positional_embedding.detach()
    assert new.shape == (1 + 64, 64)
    torch.testing.assert_close(new[0], old[0])  # class token kept
    grid = old[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(new[1:], expected.permute(0, 2, 3, 1).reshape(64, 64))
    torch.testing.assert_close(big.model.visual.conv1.weight, source.model.visual.conv1.weight)
    fs = big.features(big.preprocess(_images(2, 50)))
    assert fs.layers["block4"].shape == (2, 64, 8, 8)
    # and the same file at the native size gives the source network back exactly
    same = oc.OpenClipBackbone(tiny_arch, weights=str(checkpoint), quick_gelu=False)
    x = source.preprocess(_images(2, 32))
    torch.testing.assert_close(same.features(x).embedding, source.features(x).embedding)


def test_an_openai_style_torchscript_checkpoint_loads(tiny_arch, tmp_path):
    """OpenAI's releases (ViT-L-14-336px.pt) are TorchScript archives, refused by weights_only loads."""
    import copy
    import warnings

    source = oc.OpenClipBackbone(tiny_arch, weights="random", quick_gelu=True)
    model = copy.deepcopy(source.model)
    mask = model.attn_mask  # a plain attribute in OpenAI's modules, not a state-dict entry
    del model._buffers["attn_mask"]
    model.attn_mask = mask
    image, text = torch.randn(1, 3, 32, 32), source.tokenizer(["a"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, (image, text), check_trace=False, strict=False).save(str(tmp_path / "jit.pt"))
    assert weights.is_torchscript_archive(tmp_path / "jit.pt")
    assert not weights.is_torchscript_archive(tmp_path / "nope.pt")
    loaded = oc.OpenClipBackbone(tiny_arch, weights=str(tmp_path / "jit.pt"), quick_gelu=True)
    x = source.preprocess(_images(2, 32))
    torch.testing.assert_close(loaded.features(x).embedding, source.features(x).embedding)


def test_input_size_must_be_a_multiple_of_the_patch(tiny_arch):
    with pytest.raises(ConfigError, match="multiple of its patch size 8"):
        oc.OpenClipBackbone(tiny_arch, weights="random", input_size=60)
    with pytest.raises(ConfigError, match="precision"):
        oc.OpenClipBackbone(tiny_arch, weights="random", precision="fp8")


def test_identity_names_everything_that_changes_the_features(tiny_arch, tiny):
    ident = tiny.identity()
    assert ident["name"] == TINY and ident["weights"] == "random" and ident["weights_file"] is None
    assert ident["layers"] == list(tiny.layers) and ident["input_size"] == 32 and ident["precision"] == "fp32"
    assert ident["resample"] == "bicubic" and "quick_gelu" in ident


def test_registered_vit_b_32(monkeypatch):
    for arch in ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336"):
        assert arch in BACKBONES.names()
        factory = BACKBONES.entry(arch).factory
        assert inspect.signature(factory).parameters["weights"].default == "openai"  # random only when asked
    backbone = BACKBONES.create("ViT-B-32", weights="random", input_size=64)
    assert backbone.name == "ViT-B-32" and backbone.layers == ("block3", "block6", "block9", "block12")
    assert backbone.quick_gelu  # OpenAI's CLIP activation, as the 'openai' tag says
    assert backbone.mean == open_clip.OPENAI_DATASET_MEAN and backbone.std == open_clip.OPENAI_DATASET_STD
    fs = backbone.features(backbone.preprocess(_images(2, 70)))
    assert {k: tuple(v.shape) for k, v in fs.layers.items()} == {f"block{i}": (2, 768, 2, 2) for i in (3, 6, 9, 12)}
    assert fs.embedding.shape == (2, 512) and torch.allclose(fs.embedding.norm(dim=1), torch.ones(2))
    assert backbone.encode_text(["a photo of a scratch"]).shape == (1, 512)


# --------------------------------------------------------------------------- weights


@pytest.fixture
def offline(monkeypatch):
    """No cached file and no network, whatever this machine has."""
    monkeypatch.setattr(weights, "cached_checkpoint", lambda cfg: None)
    monkeypatch.setattr(weights, "network_reachable", lambda host, port=443, timeout=0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_offline_tag_gives_one_clear_error(offline):
    with pytest.raises(WeightsError) as error:
        BACKBONES.create("ViT-L-14-336")  # the default weights: the 'openai' tag
    message = str(error.value)
    assert "'openai'" in message and "ViT-L-14-336" in message
    assert "no cached file found" in message and "no network" in message
    assert "--weights /path/to/checkpoint.pt" in message and "where a network exists" in message
    assert "--weights random" in message and "tests only" in message


def test_hf_hub_offline_is_respected(monkeypatch):
    monkeypatch.setattr(weights, "cached_checkpoint", lambda cfg: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        BACKBONES.create("ViT-B-16", weights="laion400m_e32")


def test_reachability_probe_says_no_for_an_unreachable_host():
    assert not weights.network_reachable("bench-test.invalid", 443, timeout=2.0)  # .invalid never resolves


def test_cached_tag_file_is_found_without_network(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.cache/clip, where open_clip keeps URL downloads
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setattr(weights, "network_reachable", lambda *a, **k: pytest.fail("no network probe when cached"))
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    assert weights.cached_checkpoint(cfg) is None
    target = tmp_path / ".cache" / "clip" / "ViT-B-32.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stand-in")
    path, tag_cfg = weights.resolve_tag("ViT-B-32", "openai")
    assert path == target and tag_cfg["quick_gelu"]


def test_missing_path_unknown_tag_and_broken_file(tiny_arch, tmp_path):
    missing = tmp_path / "nowhere" / "ViT-L-14-336px.pt"
    with pytest.raises(WeightsError, match=str(missing)):
        BACKBONES.create("ViT-B-32", weights=str(missing))
    with pytest.raises(WeightsError, match="Known tags: openai"):
        BACKBONES.create("ViT-L-14-336", weights="laion_nonexistent")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.pt"):
        oc.OpenClipBackbone(tiny_arch, weights=str(broken))


# --------------------------------------------------------------------------- MuSc on CLIP


def test_musc_asks_vit_l_14_336_for_its_official_setting():
    musc = METHODS.create("musc")
    assert musc.info.default_backbone == "efficientnet_lite0"  # the embedded default stays offline
    assert musc.backbone_options("ViT-L-14-336") == {
        "layers": ("block6", "block12", "block18", "block24"), "input_size": 518, "quick_gelu": False}
    assert musc.backbone_options("ViT-B-32") == {} and musc.backbone_options("efficientnet_lite0") == {}
    assert "ViT-L-14-336" in musc.info.deviations and "518" in musc.info.deviations
    assert 518 % 14 == 0  # 37×37 patch grid


def test_bench_run_musc_on_vit_b_32_random_end_to_end(tmp_path):
    from bench.cli import main
    from bench.datasets.synthetic import generate
    from bench.tracking import open_store

    root = generate(tmp_path / "syn", seed=2, categories=["tile"], n_test=12, size=64, progress=False)
    out = tmp_path / "out"
    args = ["run", "--data-root", str(root), "--out", str(out), "--methods", "musc", "--backbone", "ViT-B-32",
            "--weights", "random", "--refiners", "none", "--set", "pgt.n_groups=2", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    units = open_store(out).units()
    assert len(units) == 1 and units.method.iloc[0] == "musc" and units.refiner.iloc[0] == "none"
    assert units.pixel_auroc.between(0, 1).all() and units.image_auroc.between(0, 1).all()
    store = open_store(out)
    run = store.client.search_runs([store.experiment_id], "tags.`bench.level` = 'unit'")[0]
    assert run.data.params["backbone"] == "ViT-B-32" and run.data.params["backbone_input_size"] == "224"
    parent = store.client.get_run(store.parents().run_id.iloc[0])
    assert parent.data.params["weights"] == "random" and parent.data.params["backbone"] == "ViT-B-32"
    assert any((out / "cache" / "features").rglob("*.pt"))  # features cached for the next run
