"""AdaCLIP (bench/methods/adaclip.py): the map, HSF, image-score and loss formulas pinned by hand on tiny
inputs, the prompted text tower against a hand loop, the official checkpoint keys, the errors,
training, and a `bench run` smoke test on a random ViT-B-32.

The prompted visual forward is pinned in tests/methods/adaclip/test_visual.py.
Each image encodes its own 48 prompted sentences; the ViT-B-32 checks use 1 of the 4 templates
(``few_templates``: 12 sentences) to stay fast on a CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from bench.errors import ConfigError, WeightsError
from bench.methods.adaclip import model as M
from bench.methods.adaclip import train as T
from bench.methods.adaclip import visual as AP
from bench.records import FeatureSet
from bench.registry import BACKBONES, METHODS
from clip_helpers import assert_missing_weights_named, assert_runs, few_templates_fixture
from fakes import TinyBackbone

pytestmark = pytest.mark.usefixtures("one_thread")


few_templates = few_templates_fixture(M)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- settings


def test_sentences_are_the_official_ones():
    assert M.TEMPLATES == ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
                           "a cropped photo of the {}.")
    normal, abnormal = M.prompt_sentences("pipe-fryum")
    assert len(normal) == 7 * 4 and len(abnormal) == 5 * 4
    assert normal[0] == "a bad photo of a pipe fryum."  # '-' read as a space, as official
    assert normal[4] == "a bad photo of a flawless pipe fryum."  # state-major
    assert abnormal[-1] == "a cropped photo of the pipe fryum with damage."
    assert M.prompt_sentences("metal_nut")[1][1] == "a low resolution photo of the damaged metal_nut."


def test_layers_and_backbone_options_are_the_official_ones():
    assert M.official_layers(24) == ("block6", "block12", "block18", "block24")
    assert M.official_layers(12) == ("block3", "block6", "block9", "block12")
    method = METHODS.create("adaclip", checkpoint="untrained", init_seed=2)
    extra = {"checkpoint": "untrained", "length": 5, "depth": 4, "init_seed": 2}
    assert method.backbone_options("ViT-L-14-336") == {
        "layers": ("block6", "block12", "block18", "block24"), "quick_gelu": False, "input_size": 518,
        "extras": {AP.AdaCLIPPrompts: extra}}
    assert method.backbone_options("ViT-B-16") == {"layers": ("block3", "block6", "block9", "block12"),
                                                   "quick_gelu": False, "extras": {AP.AdaCLIPPrompts: extra}}
    assert method.backbone_options("efficientnet-lite0") == {}
    info = method.info
    assert info.needs_auxiliary_training and not info.inter_image and info.default_backbone == "ViT-L-14-336"
    assert info.arxiv == "2407.15795" and info.backbone_options["ViT-L-14-336"]["input_size"] == 518
    training = (T.TRAIN_LR, T.TRAIN_BETAS, T.TRAIN_EPOCHS, T.TRAIN_BATCH_SIZE, T.TRAIN_SEED)
    assert training == (0.01, (0.5, 0.999), 5, 1, 111)
    assert (M.K_CLUSTERS, M.TOKENS_PER_CLUSTER, M.HSF_ALPHA, M.LOGIT_SCALE) == (20, 5, 0.2, 100.0)
    assert "adaclip" in METHODS.names() and "adaclip" in METHODS.resolve("all")
    with pytest.raises(ConfigError, match="k_clusters"):
        METHODS.create("adaclip", k_clusters=0)


# --------------------------------------------------------------------------- formulas by hand


def test_map_is_the_softmax_of_the_mean_logits_over_layers_by_hand():
    # 2 layers, one image, a 2x2 grid: per patch (normal, abnormal) logits
    first = [(1.0, 2.0), (0.0, -1.0), (3.0, 3.5), (-2.0, 0.0)]
    second = [(0.0, 0.0), (2.0, 0.5), (1.0, -1.0), (0.0, 4.0)]
    logits = [torch.tensor([first]), torch.tensor([second])]
    out = M.anomaly_map(logits, (2, 2))
    assert out.shape == (1, 2, 2)
    for p in range(4):
        mean_normal = (first[p][0] + second[p][0]) / 2
        mean_abnormal = (first[p][1] + second[p][1]) / 2
        assert out[0, p // 2, p % 2].item() == pytest.approx(sigmoid(mean_abnormal - mean_normal), abs=1e-6)
    # the official order: upsampled (align_corners=True) before the softmax; a 2x2 grid to 3x3 keeps
    # the corners and puts the mean of the four patches' logits at the centre
    big = M.anomaly_map(logits, (2, 2), size=3)
    assert big.shape == (1, 3, 3)
    assert big[0, 0, 2].item() == pytest.approx(out[0, 0, 1].item(), abs=1e-6)
    assert big[0, 2, 0].item() == pytest.approx(out[0, 1, 0].item(), abs=1e-6)
    centre = sum((a[1] + b[1]) / 2 - (a[0] + b[0]) / 2 for a, b in zip(first, second)) / 4
    assert big[0, 1, 1].item() == pytest.approx(sigmoid(centre), abs=1e-6)


def _hsf_case():
    """12 patches, 2 layers, D = 3: 7 tokens near x, 3 near y (most abnormal), 2 near z (least)."""
    rng = np.random.default_rng(0)
    centres = [(1.0, 0.0, 0.0)] * 7 + [(0.0, 1.0, 0.0)] * 3 + [(0.0, 0.0, 1.0)] * 2
    layers = [np.array(centres) + 0.01 * rng.standard_normal((12, 3)) for _ in range(2)]
    scores = [float(s) for s in range(10, 0, -1)] + [-5.0, -6.0]  # patch p's abnormal logit
    logits = [torch.tensor([[(0.0, s) for s in scores]])] * 2
    return layers, logits


def test_the_hybrid_prompt_is_rounded_to_fp16_as_official():
    prompts = M.HybridPrompts(8, 4, length=3, depth=2)
    dynamic = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0)) / 3
    exact = prompts.static[1] + dynamic
    got = prompts.context(1, dynamic)
    assert got.dtype == torch.float16 and torch.equal(got, exact.half())  # PromptLayer: context.half()
    assert (got.float() - exact).abs().max() > 0


def test_hybrid_semantic_fusion_by_hand():
    layers, logits = _hsf_case()
    patches = [torch.tensor(layer[None], dtype=torch.float32) for layer in layers]
    fused = M.hybrid_semantic_fusion(patches, logits, k_clusters=2)  # keeps 5 * 2 = 10 patches
    # by hand: each cluster's tokens averaged over members and layers, then the two clusters averaged
    mean_x = sum(layers[i][p] for i in range(2) for p in range(7)) / 14
    mean_y = sum(layers[i][p] for i in range(2) for p in range(7, 10)) / 6
    expected = (mean_x + mean_y) / 2
    expected = expected / np.linalg.norm(expected)
    assert fused.shape == (1, 3)
    np.testing.assert_allclose(fused[0].numpy(), expected, atol=1e-5)
    # not the plain mean of the kept tokens (7 : 3), nor a mean that includes the 2 least abnormal ones
    plain = sum(layers[i][p] for i in range(2) for p in range(10)) / 20
    assert np.abs(plain / np.linalg.norm(plain) - expected).max() > 0.1
    # fewer patches than clusters: each kept patch is its own cluster -> the mean of all of them
    few = [z[:, :4] for z in patches]
    out = M.hybrid_semantic_fusion(few, [layer[:, :4] for layer in logits], k_clusters=20)
    mean = sum(layers[i][p] for i in range(2) for p in range(4)) / 8
    np.testing.assert_allclose(out[0].numpy(), mean / np.linalg.norm(mean), atol=1e-5)


def test_image_score_by_hand():
    text = torch.eye(2)[None]  # columns: normal (1, 0), abnormal (0, 1)
    u = torch.tensor([[0.6, 0.8]])
    f = torch.tensor([[1.0, 0.0]])
    plain = M.image_logits(u, text).softmax(dim=-1)[0, 1].item()
    assert plain == pytest.approx(sigmoid(100 * (0.8 - 0.6)), rel=1e-6)
    g = (0.2 * 1.0 + 0.8 * 0.6, 0.8 * 0.8)  # 0.2 f + 0.8 u, then normalised
    norm = math.hypot(*g)
    fused = M.image_logits(u, text, f).softmax(dim=-1)[0, 1].item()
    assert fused == pytest.approx(sigmoid(100 * (g[1] - g[0]) / norm), rel=1e-5)


def test_training_loss_by_hand():
    # one layer, a 2x2 grid (masks at the grid size: the align_corners upsampling is the identity)
    patch = [(0.0, 1.0), (2.0, 0.5), (1.0, 1.0), (0.0, -3.0)]
    logits = [torch.tensor([patch])]
    image = torch.tensor([[0.3, 1.2]])
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    target = [1, 0, 0, 0]
    p1 = [sigmoid(a - n) for n, a in patch]

    def focal(prob_abnormal, t):
        onehot = (1e-5, 1 - 1e-5) if t else (1 - 1e-5, 1e-5)
        pt = onehot[0] * (1 - prob_abnormal) + onehot[1] * prob_abnormal + 1e-5
        return -((1 - pt) ** 2) * math.log(pt)

    def dice(prob, t):
        return 1 - (2 * sum(p * q for p, q in zip(prob, t)) + 1) / (sum(prob) + sum(t) + 1)

    def row_dice(prob, t):  # the official batch-1 dice: one sample per mask row
        return (dice(prob[:2], t[:2]) + dice(prob[2:], t[2:])) / 2

    pixels = sum(focal(p, t) for p, t in zip(p1, target)) / 4
    pixels += row_dice(p1, target) + row_dice([1 - p for p in p1], [1 - t for t in target])
    for label in (1, 0):  # the image's label, whatever its mask (official: the sample's 'anomaly')
        expected = focal(sigmoid(1.2 - 0.3), label) + pixels
        got = T.training_loss(logits, image, mask, torch.tensor([label]), (2, 2)).item()
        assert got == pytest.approx(expected, rel=1e-5)
    whole_image = dice(p1, target) + dice([1 - p for p in p1], [1 - t for t in target])
    assert abs(whole_image - row_dice(p1, target) - row_dice([1 - p for p in p1], [1 - t for t in target])) > 0.05


# --------------------------------------------------------------------------- a random ViT-B-32


def _backbone(method, **overrides):
    return BACKBONES.create("ViT-B-32", weights="random", **{**method.backbone_options("ViT-B-32"), "input_size": 64,
                                                             **overrides})


@pytest.fixture(scope="module")
def bound(few_templates):
    method = METHODS.create("adaclip", checkpoint="untrained", init_seed=1)
    backbone = _backbone(method)
    method.bind(backbone)
    return method, backbone


def _features(backbone, n=2, category="tile", seed=0):
    rng = np.random.default_rng(seed)
    features = backbone.features(backbone.preprocess([rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)
                                                      for _ in range(n)]))
    features.category = category
    return features


def hand_text(model, ids, static, dynamic, length, depth):
    """The official encode_text with PromptLayer.forward_text, over the full 77-token context."""
    x = model.token_embedding(ids) + model.positional_embedding
    for j, block in enumerate(model.transformer.resblocks):
        if 1 <= j < depth:
            x = x.clone()
            x[:, 1:1 + length] = (static[j] + dynamic).half().float()  # official: .half()
        x = block(x, attn_mask=model.attn_mask)
    return model.ln_final(x)[torch.arange(len(ids)), ids.argmax(dim=-1)] @ model.text_projection


def test_an_untrained_method_reads_no_input_file(bound):
    assert bound[0].input_files() == []


def test_prompted_text_tower_by_hand(bound):
    _, backbone = bound
    model = backbone.model
    ids = backbone.tokenizer(["a bad photo of a damaged tile.", "a cropped photo of the flawless metal nut."])
    with torch.no_grad():
        # depth 1: the sentence goes through unprompted, i.e. CLIP's own text embedding
        unprompted = M.HybridPrompts(512, 512, length=5, depth=1)
        dynamic = torch.randn(2, 5, 512, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(M.encode_prompted_text(model, ids, unprompted, dynamic), model.encode_text(ids),
                                   atol=1e-5, rtol=1e-5)
        prompts = M.HybridPrompts(512, 512, length=5, depth=4)
        got = M.encode_prompted_text(model, ids, prompts, dynamic)
        want = hand_text(model, ids, prompts.static, dynamic, 5, 4)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got - model.encode_text(ids)).abs().max() > 1e-3


def test_text_features_are_per_image_class_means(bound):
    method, backbone = bound
    clip = torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = method.text(clip, ["tile", "tile"])
        assert text.shape == (2, 512, 2)
        normal, abnormal = M.prompt_sentences("tile")
        assert len(normal) == 7 and len(abnormal) == 5  # one template
        ids = backbone.tokenizer(normal + abnormal)
        for b in range(2):
            dynamic = method.learned.text.dynamic(clip[b:b + 1]).expand(12, -1, -1)
            z = F.normalize(hand_text(backbone.model, ids, method.learned.text.static, dynamic, 5, 4), dim=-1)
            for column, rows in enumerate((z[:7], z[7:])):
                mean = rows.mean(dim=0)
                torch.testing.assert_close(text[b, :, column], mean / mean.norm(), atol=1e-5, rtol=1e-5)


def test_score_wires_the_pinned_formulas(bound):
    method, backbone = bound
    assert method.layers == ("block3", "block6", "block9", "block12")
    features = _features(backbone)
    out = method.score(features)
    assert out.maps.shape == (2, 2, 2) and out.image_scores.shape == (2,)
    head = method.learned
    with torch.no_grad():
        text = method.text(features.layers["adaclip_clip_image"].flatten(1), ["tile", "tile"])
        patches = [F.normalize(head.patch[i](features.layers[f"adaclip_{name}"].flatten(2).transpose(1, 2)), dim=-1)
                   for i, name in enumerate(method.layers)]
        logits = [100 * z @ text for z in patches]
        image = F.normalize(head.image(features.layers["adaclip_image"].flatten(1)), dim=-1)
        fused = M.hybrid_semantic_fusion(patches, logits, 20)
        scores = M.image_logits(image, text, fused).softmax(dim=-1)[:, 1]
    torch.testing.assert_close(out.maps, M.anomaly_map(logits, (2, 2)))
    torch.testing.assert_close(out.image_scores, scores)
    # per image: reference ignored, one image alone scores the same
    torch.testing.assert_close(method.score(features, reference=features).maps, out.maps)
    alone = method.score(features.select([1]))
    torch.testing.assert_close(alone.maps, out.maps[1:], atol=1e-5, rtol=1e-5)
    # test.py: the mean logits upsampled to the input size before the softmax, then gaussian_filter(sigma=4)
    smoothed = gaussian_filter(M.anomaly_map(logits, (2, 2), 64).numpy(), sigma=4, axes=(1, 2))
    np.testing.assert_allclose(out.evaluated.numpy(), smoothed, atol=1e-5)
    method.use_hsf = False
    try:
        torch.testing.assert_close(method.score(features).image_scores, M.image_logits(image, text).softmax(-1)[:, 1])
    finally:
        method.use_hsf = True


def _official_vit_b32_state(seed=0) -> dict:
    """Official key names with ViT-B-32's shapes (width 768, embed / text width 512), length 5, depth 4."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {}
    for j in range(4):
        shapes[f"visual_prompter.static_prompts.{j}"] = (5, 768)
        shapes[f"text_prompter.static_prompts.{j}"] = (5, 512)
    for i in range(5):
        shapes |= {f"dynamic_visual_prompt_generator.head.{i}.weight": (768, 512),
                   f"dynamic_visual_prompt_generator.head.{i}.bias": (768,),
                   f"dynamic_text_prompt_generator.head.{i}.weight": (512, 512),
                   f"dynamic_text_prompt_generator.head.{i}.bias": (512,)}
    for i in range(4):
        shapes |= {f"patch_token_layer.head.{i}.weight": (512, 768), f"patch_token_layer.head.{i}.bias": (512,)}
    shapes |= {"cls_token_layer.head.0.weight": (512, 512), "cls_token_layer.head.0.bias": (512,)}
    return {f"clip_model.{k}": 0.02 * torch.randn(*s, generator=gen) for k, s in shapes.items()}


def test_official_checkpoint_and_our_format(few_templates, tmp_path):
    raw = _official_vit_b32_state()
    path = tmp_path / "pretrained_visa_clinicdb.pth"
    torch.save(raw, path)
    method = METHODS.create("adaclip", checkpoint=str(path))
    # layers given deepest first: the official patch heads still go in increasing depth
    backbone = _backbone(method, layers=("block12", "block9", "block6", "block3"))
    method.bind(backbone)
    assert method.input_files() == [path.resolve()]  # in the resume fingerprint: a replaced checkpoint is a new run
    assert method.layers == ("block3", "block6", "block9", "block12")
    head, extra = method.learned, backbone.extras[AP.NAME]
    assert torch.equal(head.patch[0].weight, raw["clip_model.patch_token_layer.head.0.weight"])
    assert torch.equal(head.patch[3].bias, raw["clip_model.patch_token_layer.head.3.bias"])
    assert torch.equal(head.image.weight, raw["clip_model.cls_token_layer.head.0.weight"])
    assert torch.equal(head.text.static[2], raw["clip_model.text_prompter.static_prompts.2"])
    assert torch.equal(head.text.generator[4].weight, raw["clip_model.dynamic_text_prompt_generator.head.4.weight"])
    assert torch.equal(extra.prompts.static[3], raw["clip_model.visual_prompter.static_prompts.3"])
    assert method.info.settings["checkpoint_source"] == "official"
    # ours: save, reload, same scores
    features = _features(backbone)
    before = method.score(features)
    saved = method.save(tmp_path / "ours.pt")
    again = METHODS.create("adaclip", checkpoint=str(saved))
    again_backbone = _backbone(again)
    again.bind(again_backbone)
    after = again.score(_features(again_backbone))
    torch.testing.assert_close(after.maps, before.maps)
    torch.testing.assert_close(after.image_scores, before.image_scores)
    assert again.info.settings["checkpoint_source"] == "bench"
    # an official checkpoint with 3 patch heads does not fit 4 layers
    del raw["clip_model.patch_token_layer.head.3.weight"], raw["clip_model.patch_token_layer.head.3.bias"]
    torch.save(raw, path)
    fewer = METHODS.create("adaclip", checkpoint=str(path))
    fewer_backbone = _backbone(fewer)  # its extra reads the file (once) and loads the visual prompts, which fit
    with pytest.raises(WeightsError, match="number of layers") as info:
        fewer.bind(fewer_backbone)
    assert str(path) in str(info.value)


def test_the_checkpoint_is_read_once(tmp_path, monkeypatch):
    path = tmp_path / "pretrained_visa_clinicdb.pth"
    torch.save(_official_vit_b32_state(), path)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(str(f)) or real_load(f, *a, **k))
    method = METHODS.create("adaclip", checkpoint=str(path))
    method.bind(_backbone(method))  # the backbone's extra reads it; the method takes its parts from the extra
    assert reads == [str(path.resolve())]
    assert method.info.settings["checkpoint_source"] == "official"


def test_errors_are_clear(bound, monkeypatch):
    method, backbone = bound
    with pytest.raises(ConfigError, match="adaclip_prompts"):
        METHODS.create("adaclip", checkpoint="untrained").bind(TinyBackbone())
    with pytest.raises(ConfigError, match="length 3"):
        METHODS.create("adaclip", checkpoint="untrained", length=3).bind(backbone)
    with pytest.raises(ConfigError, match="bind"):
        METHODS.create("adaclip").score(_features(backbone, n=1))
    plain = FeatureSet({"block3": torch.zeros(1, 768, 2, 2)}, torch.zeros(1, 512), category="tile")
    with pytest.raises(ConfigError, match="adaclip_block3"):
        method.score(plain)
    with pytest.raises(ConfigError, match="object_name"):
        method.score(_features(backbone, n=1, category=None))
    # real weights and no checkpoint: one message that says how to get one
    monkeypatch.setattr(backbone, "weights", "openai")
    with pytest.raises(WeightsError) as info:
        METHODS.create("adaclip").bind(backbone)
    for needle in ("method_options.adaclip.checkpoint", "pretrained_visa_clinicdb.pth",
                   "pretrained_mvtec_colondb.pth", "adaclip.train.train", "untrained"):
        assert needle in str(info.value), needle


def test_train_reduces_its_loss_through_both_towers(few_templates, tmp_path):
    from bench.datasets.synthetic import generate

    root = generate(tmp_path / "syn", seed=0, categories=["tile"], n_test=4, size=64, progress=False)
    method = METHODS.create("adaclip", checkpoint="untrained")
    backbone = _backbone(method)
    method.bind(backbone)
    extra = backbone.extras[AP.NAME]
    start = {"visual": extra.prompts.static[1].clone(), "text": method.learned.text.static[1].clone(),
             "patch": method.learned.patch[0].weight.clone(), "image": method.learned.image.weight.clone()}
    identity = backbone.identity()
    saved = tmp_path / "trained.pt"
    losses = T.train(method, backbone, root, epochs=2, batch_size=4, lr=1e-3, save=saved)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses[1] < 0.8 * losses[0]
    now = {"visual": extra.prompts.static[1], "text": method.learned.text.static[1],
           "patch": method.learned.patch[0].weight, "image": method.learned.image.weight}
    for name, value in now.items():
        assert not torch.equal(value, start[name]), name
        assert not value.requires_grad
    # the features of the trained prompts get a new cache identity: the saved file's
    assert backbone.identity() != identity
    assert extra.identity()["parameters"] == {"checkpoint_sha256": AP.file_digest(saved)}
    reloaded = METHODS.create("adaclip", checkpoint=str(saved))
    reloaded_backbone = _backbone(reloaded)
    reloaded.bind(reloaded_backbone)
    expected = method.score(_features(backbone)).maps
    torch.testing.assert_close(reloaded.score(_features(reloaded_backbone)).maps, expected)
    assert reloaded.provenance["trained"]["steps"] == 2
    with pytest.raises(ConfigError, match="epochs"):
        T.train(method, backbone, root, epochs=0)


def test_bench_run_smoke(few_templates, synthetic_tiles, tmp_path):
    out = tmp_path / "out"
    assert_runs("adaclip", synthetic_tiles, out)  # random weights: untrained prompts by default
    missing = tmp_path / "pretrained_visa_clinicdb.pth"
    assert_missing_weights_named("adaclip", synthetic_tiles, out, missing, "adaclip.train.train")
