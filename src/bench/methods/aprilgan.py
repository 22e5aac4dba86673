"""APRIL-GAN: zero-shot anomaly segmentation with CLIP text prompts and per-layer linear adapters.

Chen et al., "A Zero-/Few-Shot Anomaly Classification and Segmentation Method for CVPR 2023 VAND
Workshop Challenge", arXiv 2305.17382; official code ByChelsea/VAND-APRIL-GAN (read for the
formulas and settings: ``prompt_ensemble.py``, ``model.py``, ``train.py``, ``test.py``,
``loss.py``, ``dataset.py``, ``train.sh``, ``test_zero_shot.sh``; this is our own code).
Per-image (not inter-image); the adapters are trained once on an *auxiliary* dataset, the
field's convention being: train on VisA, test on MVTec AD, and the reverse.

Pipeline (official code in brackets):

1. Text, per object name (the category folder name as is, e.g. ``metal_nut``, ``pcb1``
   [``cls_name`` of the dataset's meta.json]): 7 normal states × 35 templates = 245 sentences and
   5 abnormal states × 35 templates = 175 sentences (``NORMAL_STATES``, ``ABNORMAL_STATES``,
   ``TEMPLATES``; sentence = ``template.format(state.format(name))``). Each class: the text
   embeddings, each L2-normalised, averaged, and the mean L2-normalised again; the two classes
   form ``T`` of shape ``(D, 2)``, column 0 normal, column 1 abnormal
   [``encode_text_with_prompt_ensemble``]. Computed lazily per object name and cached.
2. Maps, per tapped layer l (ViT-L-14-336 at 518 px: blocks 6/12/18/24, 37×37 patches): the
   block's output patch tokens (before ``ln_post``, class token dropped) go through the layer's
   own linear adapter ``A_l: width → embed_dim`` (1024 → 768 on ViT-L) [``LinearLayer.fc[i]``],
   are L2-normalised, and give logits ``100 · A_l(x)ᵀ T`` (2 per patch); the anomaly map of the
   layer is the abnormal channel of the softmax over the two logits; the map is the **sum** over
   layers [``np.sum(anomaly_maps, axis=0)`` in ``test.py``], so it lies in [0, n_layers].
   The official code upsamples the logits bilinearly (``align_corners=True``) to the input size
   *before* the softmax; ``resolution="input"`` does exactly that, ``resolution="grid"`` (the
   default) takes the softmax on the patch grid and leaves the upsampling to the protocol, as
   every coarse map in bench (see DEVIATIONS).
3. Image score (zero-shot mode): CLIP's own zero-shot probability of the abnormal class,
   ``softmax(100 · e T)[1]`` with e the L2-normalised projected image embedding
   [``text_probs[0][1]`` in ``test.py``]; the map is not used for it.

Adapters, option ``checkpoint`` (no silent fallback: without it the method refuses to run, unless
the backbone has random weights, i.e. the user asked for a smoke run with ``--weights random``,
where the adapters are untrained too):

- a path to the **official released checkpoint** (``exps/pretrained/visa_pretrained.pth``,
  trained on VisA, for testing on MVTec AD; ``mvtec_pretrained.pth``, trained on MVTec AD, for
  VisA). It is ``torch.save({"trainable_linearlayer": LinearLayer.state_dict()})``; its keys
  ``fc.<i>.weight`` ``(embed_dim, width)`` and ``fc.<i>.bias`` ``(embed_dim,)`` map to ours as
  ``fc.<i>.*`` → ``linears.<layer_i>.*`` where ``layer_i`` is the i-th tapped layer **in
  increasing depth** (the official transformer collects the tapped tokens while walking the
  blocks, so ``fc.0`` is always the shallowest: ``fc.0..3`` → ``block6/12/18/24``). A bare
  ``fc.*`` state dict is accepted too. Checked: as many ``fc`` layers as tapped layers, shapes
  equal to the backbone's ``(embed_dim, width)``; anything else is a ``WeightsError`` naming the
  file. The official checkpoints fit ``ViT-L-14-336`` with ``openai`` weights at 518 px and
  blocks 6/12/18/24 (the method's backbone options), and no other setting;
- a path to adapters trained by ``train_adapters`` (below) and saved with ``save_adapters``:
  ``{"format": "bench.aprilgan.adapters", "version": 1, "layers", "dim_in", "dim_out",
  "state_dict" (our key names), "meta" (backbone and training provenance)}``;
- ``"untrained"``: freshly initialised linear layers (``nn.Linear`` default init, seeded by
  ``init_seed``). The maps are **meaningless**: for tests and for smoke runs with
  ``--weights random``, never for a result.

Training (``train_adapters``, following ``train.py``): frozen backbone, the adapters alone are
trained on the auxiliary dataset's **test** images and masks (all its categories, shuffled
together); per layer the logits are upsampled to the input size (bilinear,
``align_corners=True``), soft-maxed, and the loss is focal(probabilities, mask) +
dice(abnormal probability, mask), summed over layers [``loss.py``: focal with gamma 2, no alpha,
smooth 1e-5 on the one-hot target and on p_t; dice with smooth 1, averaged over images]; masks
are resized bilinearly to the input size and thresholded at 0.5. Adam, lr 1e-3,
betas (0.5, 0.999), batch 64, seed 111; 15 epochs on VisA (for MVTec AD), 3 on MVTec AD (for
VisA) with a 2×2 mosaic of random test images of the same category replacing a sample with
probability 0.2 [``aug_rate`` / ``combine_img``] [``train.sh``].

    from bench.methods.aprilgan import APRILGAN, train_adapters
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("aprilgan", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"),
                                device="cuda")
    train_adapters(method, backbone, "/data/visa", save="aprilgan_visa.pt")  # 15 epochs
    # then: bench run --methods aprilgan --data-root /data/mvtec \\
    #           --set method_options.aprilgan.checkpoint=aprilgan_visa.pt
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone, Dataset, Method, MethodInfo
from bench.methods._auxiliary import (
    UNTRAINED, AuxiliaryBatch, AuxiliaryData, check_training, dice_loss, fit_on_auxiliary, focal_loss,
    is_bench_checkpoint, learned_source, load_checkpoint, official_setting, save_learned, training_meta,
)
from bench.methods._prompts import ObjectPrompts, ensemble_embeddings, ensemble_sentences, require_clip
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = (
    "A Zero-/Few-Shot Anomaly Classification and Segmentation Method for CVPR 2023 VAND Workshop "
    "Challenge (APRIL-GAN; Chen et al., 2023)"
)
ARXIV = "2305.17382"

# --------------------------------------------------------------------------- official settings

# prompt_ensemble.py: states (object name in {}) and CLIP templates (state in {}).
NORMAL_STATES: tuple[str, ...] = (
    "{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage",
)
TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)
LOGIT_SCALE = 100.0  # test.py / train.py: 100.0 * tokens @ text (fixed, not CLIP's learned scale)

OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_LAYERS = ("block6", "block12", "block18", "block24")  # --features_list 6 12 18 24
BACKBONE_OPTIONS: dict[str, dict[str, object]] = {
    OFFICIAL_BACKBONE: {"layers": OFFICIAL_LAYERS, "input_size": 518},
}

# train.py / train.sh / loss.py
TRAIN_LR = 1e-3
TRAIN_BETAS = (0.5, 0.999)
TRAIN_BATCH_SIZE = 64
TRAIN_SEED = 111
OFFICIAL_EPOCHS = {"visa": 15, "mvtec": 3}  # epochs when training on that auxiliary dataset
OFFICIAL_MOSAIC_RATE = {"mvtec": 0.2}  # aug_rate: 2x2 mosaics, only when training on MVTec AD

FORMAT = "bench.aprilgan.adapters"
FORMAT_VERSION = 1
OFFICIAL_KEY = "trainable_linearlayer"
RESOLUTIONS = ("grid", "input")
SCORE_CHUNK = 32  # images per adapter pass in score() (bounds the (B, P, D) intermediates)

DEVIATIONS = (
    "Map resolution: by default (resolution='grid') the per-layer softmax is taken on the patch "
    "grid and the map is returned at grid resolution for the protocol to upsample (bilinear, "
    "align_corners=False), as every coarse map in bench; the official code upsamples the two "
    "logits to the input size (bilinear, align_corners=True) before the softmax. The two differ "
    "only between patch centres; resolution='input' reproduces the official order exactly. "
    "Precision: the adapters and the map arithmetic run in float32 (official: under CUDA fp16 "
    "autocast; the backbone still runs under fp16 autocast on CUDA as the official code). "
    "Object name in the prompts: the category name as is (as official; PGT's synthetic images "
    "carry the category of their group), or the object_name option when set. "
    "Adapters: no silent default; 'untrained' (fresh nn.Linear init) exists only for tests and "
    "smoke runs. Training (train_adapters) follows train.py (focal + dice summed over layers, "
    "Adam lr 1e-3 betas (0.5, 0.999), batch 64, seed 111, 15 epochs on VisA / 3 on MVTec AD with "
    "2x2 mosaics at rate 0.2) but shuffles with numpy's generator (not torch's DataLoader), "
    "picks mosaic tiles among the dataset's test samples (official: a random defect folder, then "
    "a random file), resizes mosaic tiles of unequal size to the first tile's size, and trains "
    "the adapters in float32; the images are resized as the backbone preprocesses them (bicubic, "
    "aspect not kept) and masks bilinearly then thresholded at 0.5. Only zero-shot mode: the "
    "official few-shot memory bank is not implemented."
)


ADAPTERS_HELP = (
    "Two ways: (1) the official released checkpoint of ByChelsea/VAND-APRIL-GAN (visa_pretrained.pth, "
    "trained on VisA, to test on MVTec AD; mvtec_pretrained.pth, trained on MVTec AD, to test on VisA; "
    "for ViT-L-14-336 with openai weights at 518 px, blocks 6/12/18/24), or (2) adapters trained on the "
    "auxiliary dataset (VisA for MVTec AD and the reverse) with "
    "bench.methods.aprilgan.train_adapters(method, backbone, dataset, save=PATH)."
)


# --------------------------------------------------------------------------- text


def prompt_sentences(name: str) -> tuple[list[str], list[str]]:
    """The (normal, abnormal) sentences of object ``name``: states × templates, state-major."""
    return ensemble_sentences(name, NORMAL_STATES, TEMPLATES), ensemble_sentences(name, ABNORMAL_STATES, TEMPLATES)


def class_text_embeddings(encode: Callable[[list[str]], torch.Tensor], name: str) -> torch.Tensor:
    """``(D, 2)``: per class, the L2-normalised mean of the L2-normalised sentence embeddings."""
    return ensemble_embeddings(encode, prompt_sentences(name))


# --------------------------------------------------------------------------- adapters


class Adapters(nn.Module):
    """One linear layer per tapped layer: patch tokens of ``width`` → the joint space ``dim_out``."""

    def __init__(self, layers: Sequence[str], dim_in: dict[str, int], dim_out: int) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.dim_in = {name: int(dim_in[name]) for name in self.layers}
        self.dim_out = int(dim_out)
        self.linears = nn.ModuleDict({name: nn.Linear(self.dim_in[name], self.dim_out) for name in self.layers})

    def forward(self, name: str, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` patch map → ``(B, h·w, D)`` adapted tokens (not normalised)."""
        return self.linears[name](tokens.flatten(2).transpose(1, 2))


def depth_order(layers: Sequence[str]) -> tuple[str, ...]:
    """Layers in increasing depth (``block<N>`` by N); other names keep the given order."""
    layers = tuple(layers)
    numbers = [re.fullmatch(r"block(\d+)", name) for name in layers]
    if all(numbers):
        return tuple(sorted(layers, key=lambda name: int(name[5:])))
    return layers


def official_to_bench(state: dict[str, torch.Tensor], layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Official ``LinearLayer`` keys (``fc.<i>.weight|bias``) → ours (``linears.<layer_i>.*``).

    ``layers`` in increasing depth: ``fc.0`` is the shallowest tapped layer. Raises ValueError
    (turned into a WeightsError naming the file by the loader) when the keys do not fit.
    """
    pattern = re.compile(r"fc\.(\d+)\.(weight|bias)")
    found: dict[int, set[str]] = {}
    for key in state:
        match = pattern.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected key {key!r} (an official APRIL-GAN LinearLayer has fc.<i>.weight/bias only)")
        found.setdefault(int(match.group(1)), set()).add(match.group(2))
    indices = sorted(found)
    if indices != list(range(len(layers))):
        raise ValueError(
            f"it holds {len(indices)} linear layer(s) (fc.{', fc.'.join(map(str, indices))}) but the backbone taps "
            f"{len(layers)} layer(s) ({', '.join(layers)}); the official checkpoints hold 4, for blocks 6/12/18/24"
        )
    for i in indices:
        if found[i] != {"weight", "bias"}:
            raise ValueError(f"fc.{i} lacks its {'bias' if 'weight' in found[i] else 'weight'}")
    return {f"linears.{layers[i]}.{part}": state[f"fc.{i}.{part}"] for i in indices for part in ("weight", "bias")}


def _check_shapes(state: dict[str, torch.Tensor], adapters: Adapters) -> None:
    for name in adapters.layers:
        expected = {"weight": (adapters.dim_out, adapters.dim_in[name]), "bias": (adapters.dim_out,)}
        for part, shape in expected.items():
            key = f"linears.{name}.{part}"
            if key not in state:
                raise ValueError(f"no {key}")
            got = tuple(state[key].shape)
            if got != shape:
                raise ValueError(
                    f"{key} has shape {got}, the backbone needs {shape} (width {adapters.dim_in[name]} → "
                    f"embedding dim {adapters.dim_out}); the checkpoint was made for another backbone"
                )


def load_adapters(path: str | Path, adapters: Adapters) -> dict[str, object]:
    """Load a checkpoint (official or ours) into ``adapters``; returns a description of it.

    Any file that is missing, unreadable or does not fit is a ``WeightsError`` naming it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"APRIL-GAN adapters {path}: file not found")
    obj = load_checkpoint(path, "APRIL-GAN", "adapters")
    try:
        if is_bench_checkpoint(obj, FORMAT, FORMAT_VERSION, adapters.layers):
            state = dict(obj["state_dict"])
            source = {"kind": "bench", "meta": dict(obj.get("meta", {}))}
        elif isinstance(obj, dict) and (OFFICIAL_KEY in obj or (obj and all(str(k).startswith("fc.") for k in obj))):
            raw = obj.get(OFFICIAL_KEY, obj)
            if not isinstance(raw, dict):
                raise ValueError(f"{OFFICIAL_KEY!r} is not a state dict")
            state = official_to_bench(dict(raw), adapters.layers)
            source = {"kind": "official", "mapping": {f"fc.{i}": name for i, name in enumerate(adapters.layers)}}
        else:
            keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(
                f"not an APRIL-GAN adapter checkpoint (expected the official {{'{OFFICIAL_KEY}': "
                f"state_dict}} or a file saved by bench's save_adapters; found {keys})"
            )
        _check_shapes(state, adapters)
        adapters.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"APRIL-GAN adapters {path}: {exc}") from None
    return source


def save_adapters(method: APRILGAN, path: str | Path, meta: dict[str, object] | None = None) -> Path:
    """Save a bound method's adapters (bench format, ``torch.save``); returns the path."""
    adapters = method.adapters
    saved = {**{k: v for k, v in method.provenance.items() if k != "source"}, **(meta or {})}
    return save_learned(path, FORMAT, FORMAT_VERSION, adapters.state_dict(), saved, layers=list(adapters.layers),
                        dim_in=dict(adapters.dim_in), dim_out=adapters.dim_out)


# --------------------------------------------------------------------------- the formulas


def layer_logits(adapters: Adapters, name: str, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B, 2, h, w)`` logits ``100 · normalise(A_l(x)) · T`` of one layer.

    ``text``: ``(D, 2)`` for the whole batch or ``(B, D, 2)`` per image.
    """
    b, _, h, w = tokens.shape
    z = F.normalize(adapters(name, tokens), dim=-1)  # (B, P, D)
    logits = LOGIT_SCALE * (z @ text)  # (B, P, 2), broadcasting a shared (D, 2)
    return logits.transpose(1, 2).reshape(b, 2, h, w)


def anomaly_maps(
    layers: dict[str, torch.Tensor], adapters: Adapters, text: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """Sum over the adapter layers of the abnormal-class softmax: ``(B, h, w)``, or ``(B, size, size)``.

    ``size=None``: softmax on the patch grid. ``size``: the official order, logits upsampled
    bilinearly (``align_corners=True``) to ``size`` first, then the softmax.
    """
    total = None
    for name in adapters.layers:
        logits = layer_logits(adapters, name, layers[name], text)
        if size is not None:
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
        part = logits.softmax(dim=1)[:, 1]
        total = part if total is None else total + part
    return total


def abnormal_probability(embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B,)`` zero-shot image score: ``softmax(100 · ê T)[1]``, ê the L2-normalised embedding."""
    e = F.normalize(embedding.float(), dim=-1)
    if text.ndim == 2:
        logits = LOGIT_SCALE * (e @ text)
    else:
        logits = LOGIT_SCALE * torch.einsum("bd,bdk->bk", e, text)
    return logits.softmax(dim=-1)[:, 1]


# --------------------------------------------------------------------------- the method


class APRILGAN(Method):
    """APRIL-GAN zero-shot: adapted patch tokens against a prompt ensemble (see the module docstring).

    checkpoint: the adapters: path to the official checkpoint or to one saved by ``train_adapters`` /
    ``save_adapters``; ``"untrained"`` for fresh layers (meaningless maps: tests and smoke runs
    only). Required.
    object_name: the object name put in the prompts for every image (default: each batch's
    category name, as the official code uses its class names).
    resolution: ``"grid"`` (default) maps at the patch grid, softmax per patch; ``"input"`` the
    official order, logits upsampled to the backbone's input size before the softmax.
    init_seed: seed of the ``"untrained"`` initialisation.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        object_name: str | None = None,
        resolution: str = "grid",
        init_seed: int = 0,
    ) -> None:
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"aprilgan resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        self.resolution = resolution
        self.prompts: ObjectPrompts[torch.Tensor] = ObjectPrompts("aprilgan", object_name)  # text embeddings
        self.init_seed = int(init_seed)

        self.adapters: Adapters | None = None
        self.provenance: dict[str, object] = {}
        self._backbone: Backbone | None = None
        self._device = torch.device("cpu")
        self.info = MethodInfo(
            name="aprilgan",
            paper=PAPER,
            arxiv=ARXIV,
            default_backbone=OFFICIAL_BACKBONE,
            needs_auxiliary_training=True,
            inter_image=False,
            min_images=1,
            settings={
                "checkpoint": self.checkpoint or "required (untrained with --weights random)",
                "prompts": f"{len(NORMAL_STATES)} normal + {len(ABNORMAL_STATES)} abnormal states x "
                           f"{len(TEMPLATES)} templates; per class mean of normalised embeddings, normalised",
                "object_name": self.prompts.object_name or "category name",
                "logit_scale": LOGIT_SCALE,
                "layers": "ViT-L-14-336: blocks 6/12/18/24 at 518 px (others: the backbone's default)",
                "adapter": "nn.Linear(width, embed_dim) per layer, tokens before ln_post, class token dropped",
                "map": "sum over layers of softmax(100 cos(adapter(token), text))[abnormal]",
                "resolution": self.resolution,
                "image_score": "softmax(100 cos(image embedding, text))[abnormal] (zero-shot)",
                "training": f"focal + dice summed over layers; Adam lr {TRAIN_LR} betas {TRAIN_BETAS}, batch "
                            f"{TRAIN_BATCH_SIZE}, seed {TRAIN_SEED}; epochs 15 on VisA / 3 on MVTec AD "
                            f"(mosaic rate 0.2); on the auxiliary dataset's test images",
                "init_seed": self.init_seed,
            },
            deviations=DEVIATIONS,
            backbone_options=BACKBONE_OPTIONS,
        )

    # -- binding
    def bind(self, backbone: Backbone) -> None:
        """Check the backbone is CLIP, build the adapters (loaded or fresh), reset the text cache."""
        require_clip(backbone, "aprilgan", OFFICIAL_BACKBONE)
        channels = dict(backbone.channels)
        if not channels:
            raise ConfigError(f"aprilgan: backbone {backbone.name!r} declares no layers")
        self._device = torch.device(getattr(backbone, "device", "cpu"))
        dim_out = getattr(backbone, "embedding_dim", None)
        if dim_out is None:
            dim_out = int(backbone.encode_text(["a photo of an object."]).shape[-1])
        layers = depth_order(list(channels))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            adapters = Adapters(layers, channels, int(dim_out))
        path = learned_source(self.checkpoint, backbone, "aprilgan", "checkpoint", ADAPTERS_HELP)
        if path is not None:
            source = load_adapters(path, adapters)
        else:
            source = {"kind": UNTRAINED, "init_seed": self.init_seed}
        self.adapters = adapters.to(self._device).eval().requires_grad_(False)
        self.info.settings["checkpoint"] = str(path) if path is not None else UNTRAINED
        self.provenance = {"source": source["kind"], "backbone": getattr(backbone, "name", ""),
                           "weights": str(getattr(backbone, "weights", "")),
                           "input_size": int(backbone.input_size), "layers": list(layers)}
        if source["kind"] == "bench":  # what the file says about how it was made
            saved = source.get("meta", {})
            self.provenance["trained"] = dict(saved.get("trained", {}))
            self.provenance["saved_with"] = {k: saved.get(k) for k in ("backbone", "weights", "input_size", "layers")}
        self._backbone = backbone
        self.prompts.cache.clear()
        self.info.settings.update(
            adapters_source=source["kind"],
            adapter_layers=list(layers),
            adapter_dims=f"{', '.join(str(channels[n]) for n in layers)} -> {int(dim_out)}",
        )
        if source["kind"] == "official":
            self.info.settings["official_key_mapping"] = source["mapping"]
        if source["kind"] == "bench":
            self.info.settings["adapters_trained"] = self.provenance["trained"]
            self.info.settings["adapters_saved_with"] = self.provenance["saved_with"]

    def _require_bound(self) -> Adapters:
        if self.adapters is None or self._backbone is None:
            raise ConfigError("aprilgan: call bind(backbone) before scoring (the Runner does it)")
        return self.adapters

    # -- text
    def text(self, name: str) -> torch.Tensor:
        """``(D, 2)`` normal/abnormal text embeddings of object ``name`` (computed once, cached)."""
        self._require_bound()
        return self.prompts.get(name, lambda n: class_text_embeddings(self._backbone.encode_text, n).to(self._device))

    # -- scoring
    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and zero-shot image scores of each image (``reference`` is ignored: per-image method)."""
        adapters = self._require_bound()
        missing = [name for name in adapters.layers if name not in features.layers]
        if missing:
            raise ConfigError(
                f"aprilgan: the features lack layer(s) {', '.join(missing)} its adapters were built for "
                f"(features have {', '.join(features.layers) or 'none'})"
            )
        text = self.text(self.prompts.object_for(features.category))
        size = int(self._backbone.input_size) if self.resolution == "input" else None
        n = len(features)
        maps, scores = [], []
        with torch.no_grad():
            for start in range(0, n, SCORE_CHUNK):
                rows = slice(start, start + SCORE_CHUNK)
                layers = {name: features.layers[name][rows].to(self._device, torch.float32) for name in adapters.layers}
                maps.append(anomaly_maps(layers, adapters, text, size).float().cpu())
                scores.append(abnormal_probability(features.embedding[rows].to(self._device), text).float().cpu())
        if not maps:
            h, w = features.layers[adapters.layers[0]].shape[-2:]
            side = (size, size) if size is not None else (h, w)
            return ScoreOutput(torch.zeros(0), torch.zeros(0, *side))
        return ScoreOutput(image_scores=torch.cat(scores), maps=torch.cat(maps))


@METHODS.register(
    "aprilgan",
    "APRIL-GAN (VAND 2023): CLIP prompt ensemble vs linearly adapted patch tokens; needs adapters "
    "trained on an auxiliary dataset (--set method_options.aprilgan.checkpoint=PATH)",
)
def create(
    checkpoint: str | None = None,
    object_name: str | None = None,
    resolution: str = "grid",
    init_seed: int = 0,
) -> APRILGAN:
    """APRIL-GAN zero-shot.

    checkpoint: the adapters: official checkpoint (visa_pretrained.pth / mvtec_pretrained.pth), a file saved by
    bench.methods.aprilgan.train_adapters, or 'untrained' (tests and smoke runs only). Required.
    object_name: object name in the prompts (default: the category name).
    resolution: 'grid' (softmax per patch, the protocol upsamples) or 'input' (official order).
    init_seed: seed of the 'untrained' initialisation.
    """
    return APRILGAN(checkpoint=checkpoint, object_name=object_name, resolution=resolution, init_seed=init_seed)


# --------------------------------------------------------------------------- training


def train_adapters(
    method: APRILGAN,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int | None = None,
    lr: float = TRAIN_LR,
    batch_size: int = TRAIN_BATCH_SIZE,
    mosaic_rate: float | None = None,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``method``'s adapters on an auxiliary dataset's test images and masks (official ``train.py``).

    method: an APRIL-GAN method; its current adapters are the starting point (create it with
    ``checkpoint="untrained"`` to train from scratch, as the official code does). It is bound to
    ``backbone`` first when it is not already; after training it scores with the new adapters.
    dataset: a bench Dataset or a dataset root (opened with ``bench.data.open_dataset``); the
    field's convention: VisA adapters for testing on MVTec AD, MVTec AD adapters for VisA.
    categories: the categories trained on (default: all, shuffled together).
    epochs: None = official for the dataset (15 on VisA, 3 on MVTec AD; required otherwise).
    lr, batch_size, seed: official 1e-3, 64, 111 (Adam with betas (0.5, 0.999)).
    mosaic_rate: probability of replacing a sample by a 2x2 mosaic of its category; None =
    official (0.2 on MVTec AD, 0 otherwise).
    save: write the trained adapters there (``save_adapters``), loadable with ``checkpoint=PATH``.
    max_steps: stop after this many optimiser steps (None: all epochs).
    Returns the loss of every step.
    """
    if not isinstance(method, APRILGAN):
        raise ConfigError(f"train_adapters trains an APRIL-GAN method, got {type(method).__name__}")
    data = AuxiliaryData.open(dataset, categories)
    epochs = official_setting(epochs, OFFICIAL_EPOCHS, data, "train_adapters", "epochs")
    rate = float(official_setting(mosaic_rate, OFFICIAL_MOSAIC_RATE, data, "train_adapters", "mosaic_rate", 0.0))
    check_training("train_adapters", epochs, batch_size, lr, rate, max_steps)
    if method._backbone is not backbone:
        method.bind(backbone)
    adapters = method._require_bound()
    size = int(backbone.input_size)

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        gt = batch.masks.to(method._device)
        feats = backbone.features(backbone.preprocess(batch.images))
        text = torch.stack([method.text(method.prompts.object_for(c)) for c in batch.categories])  # (B, D, 2)
        loss = torch.zeros((), device=method._device)
        for layer in adapters.layers:
            logits = layer_logits(adapters, layer, feats.layers[layer].to(method._device, torch.float32), text)
            probs = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True).softmax(dim=1)
            loss = loss + focal_loss(probs, gt) + dice_loss(probs[:, 1], gt)
        return loss

    optimizer = torch.optim.Adam(adapters.parameters(), lr=float(lr), betas=TRAIN_BETAS)
    losses = fit_on_auxiliary([adapters], optimizer, data, step_loss, epochs=int(epochs), batch_size=int(batch_size),
                              size=size, mosaic_rate=rate, rng=np.random.default_rng(int(seed)), max_steps=max_steps,
                              progress=progress, desc="aprilgan adapters")
    meta = training_meta(data, losses, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                         mosaic_rate=rate, seed=int(seed))
    method.provenance = {**method.provenance, "source": "bench", "trained": meta}
    method.info.settings.update(adapters_source="trained in this process", adapters_trained=meta)
    if save is not None:
        save_adapters(method, save)
    return losses
