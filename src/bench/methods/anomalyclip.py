"""AnomalyCLIP: object-agnostic learned text prompts against V-V attention (DPAM) patch tokens.

Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
ICLR 2024, arXiv 2310.18961; official code zqhang/AnomalyCLIP (read for the formulas and settings:
``AnomalyCLIP_lib/AnomalyCLIP.py``, ``AnomalyCLIP_lib/model_load.py``, ``prompt_ensemble.py``,
``train.py``, ``test.py``, ``loss.py``, ``utils.py``, ``train.sh``, ``test.sh``; our own code).
Per-image; the prompts are trained once on an auxiliary dataset (VisA for MVTec AD and the reverse).

Pipeline (official names in brackets):

1. Text [``AnomalyCLIP_PromptLearner``, ``encode_text_learn``], the same for every category: two
   sentences, ``"X X … X object."`` and ``"X X … X damaged object."`` with 12 X's. Their token
   embeddings at the X positions are replaced by learned context vectors, one set per sentence
   [``ctx_pos``, ``ctx_neg``]; at the input of text blocks 2..9 (1-based) the tokens at positions
   1..4 are replaced by learned deep prompts, one ``(4, width)`` set per block
   [``compound_prompts_text``, depth 9]. The rest is CLIP's text tower (causal mask, ``ln_final``,
   the end-of-text token, ``text_projection``). T = the two embeddings, L2-normalised, ``(D, 2)``
   with columns (normal, anomalous).
2. Image [``encode_image(image, [6, 12, 18, 24], DPAM_layer=20)``]: the backbone's ``dpam`` extra
   (``bench/backbones/clip_extras/dpam.py``): the V-V attention path of blocks 6..24 of
   ViT-L-14-336 at 518 px, tapped at blocks 6/12/18/24, and the official image feature.
3. Map [``compute_similarity``, ``get_similarity_map``, ``test.py``]: per tapped layer the V-V patch
   tokens go through ``ln_post`` and ``proj`` and are L2-normalised; p = softmax(cos(z, T) / 0.07)
   over the two classes and the layer's map is the anomalous probability [``(p1 + 1 - p0) / 2`` =
   p1]; the map is the sum over the layers. The official code then upsamples bilinearly to 518 px
   and smooths with a Gaussian of σ = 4 px (``scipy.ndimage.gaussian_filter``). Both are linear, so
   the map on the patch grid (``resolution="grid"``, the default) upsampled by the protocol and
   smoothed by ``--refiner gaussian`` is the official map (up to the protocol's monotone rescale);
   ``resolution="input"`` does both steps here.
4. Image score [``test.py``]: softmax(cos(e, T) / 0.07)[anomalous], e the official image feature:
   the last block's class token ``@ proj`` without ``ln_post`` (``dpam.embedding``).

Prompts, option ``checkpoint`` (no silent fallback: without it the method refuses to run unless the
backbone has random weights, i.e. a smoke run with ``--weights random``, where they are untrained):

- a path to the **official released checkpoint**, ``checkpoints/9_12_4_multiscale/epoch_15.pth``
  (trained on VisA, for MVTec AD) or ``checkpoints/9_12_4_multiscale_visa/epoch_15.pth`` (trained on
  MVTec AD, for VisA) [``train.sh``, ``test.sh``]. It is ``torch.save({"prompt_learner":
  AnomalyCLIP_PromptLearner.state_dict()})`` with keys (ViT-L-14-336: text width 768):
  ``ctx_pos`` and ``ctx_neg`` ``(1, 1, 12, 768)`` → our ``ctx[0]`` and ``ctx[1]``;
  ``compound_prompts_text.<i>`` ``(4, 768)``, i = 0..7 → our ``deep[i]``; not read:
  ``compound_prompt_projections.<i>.weight|bias`` ``(896, 768)``/``(896,)`` (built but unused by
  the official forward) and the buffers ``token_prefix_pos|neg`` ``(1, 1, 1, 768)``,
  ``token_suffix_pos|neg`` ``(1, 1, 64, 768)``, ``tokenized_prompts_pos|neg`` ``(1, 1, 77)`` (CLIP's
  tokens and token embeddings of the two sentences, recomputed here from the backbone). A bare
  state dict with these names is accepted too; wrong counts or shapes are a ``WeightsError``;
- a path to prompts trained by ``train_prompts`` and saved with ``save_prompts``:
  ``{"format": "bench.anomalyclip.prompts", "version": 1, "state_dict": {"ctx", "deep"},
  "meta"}``;
- ``"untrained"``: N(0, 0.02²) initialisation as the official one, seeded by ``init_seed``;
  meaningless maps, for tests and smoke runs only.

Training (``train_prompts``, following ``train.py``): frozen CLIP, only the prompts learn, on the
auxiliary dataset's test images and masks (all categories shuffled together). Per batch: image
loss = cross-entropy of cos(e, T) / 0.07 against the image's label (the dataset's); per layer, p
upsampled bilinearly to the input size, focal(p, mask) + dice(p1, mask) + dice(p0, 1 - mask)
[``loss.py``]; loss = 4 · Σ_layers + image loss. Adam lr 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, seed 111.

    from bench.methods.anomalyclip import train_prompts
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("anomalyclip", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"), device="cuda")
    train_prompts(method, backbone, "/data/visa", save="anomalyclip_visa.pt")
    # then: bench run --methods anomalyclip --data-root /data/mvtec \\
    #           --set method_options.anomalyclip.checkpoint=anomalyclip_visa.pt
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.clip_extras.dpam import EMBEDDING, PREFIX
from bench.backbones.openclip import ARCHS
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone, Dataset, Method, MethodInfo
from bench.methods._auxiliary import (
    UNTRAINED, AuxiliaryBatch, AuxiliaryData, check_training, dice_loss, fit_on_auxiliary, focal_loss,
    is_bench_checkpoint, learned_source, load_checkpoint, save_learned, training_meta,
)
from bench.methods._prompts import require_clip
from bench.records import FeatureSet, ScoreOutput
from bench.refiners.gaussian import gaussian_smooth
from bench.refiners.none import upsample
from bench.registry import METHODS

PAPER = "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection (Zhou et al., ICLR 2024)"
ARXIV = "2310.18961"

# --------------------------------------------------------------------------- official settings

OBJECT = "object"  # prompt_ensemble.py: classnames = ["object"]
STATES = ("{}", "damaged {}")  # state_normal_list, state_anomaly_list
PROMPT_LENGTH = 12  # --n_ctx
DEEP_DEPTH = 9  # --depth: the context at the input plus 8 deep prompt sets
DEEP_LENGTH = 4  # --t_n_ctx
INIT_STD = 0.02
TEMPERATURE = 0.07  # compute_similarity and the image score: softmax(cos / 0.07)
SIGMA = 4.0  # test.py: gaussian_filter(sigma=4) at the input size

OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_LAYERS = ("block6", "block12", "block18", "block24")  # --features_list 6 12 18 24
BACKBONE_OPTIONS: dict[str, dict[str, object]] = {
    OFFICIAL_BACKBONE: {
        "layers": OFFICIAL_LAYERS, "input_size": 518, "precision": "fp32",
        "extras": {"dpam": {"start": "block6"}},  # DAPM_replace(DPAM_layer=20): blocks 6..24
    },
}

# train.py / train.sh
TRAIN_LR = 1e-3
TRAIN_BETAS = (0.5, 0.999)
TRAIN_BATCH_SIZE = 8
TRAIN_EPOCHS = 15
TRAIN_SEED = 111
SEGMENTATION_WEIGHT = 4.0  # lam

FORMAT = "bench.anomalyclip.prompts"
FORMAT_VERSION = 1
OFFICIAL_KEY = "prompt_learner"
RESOLUTIONS = ("grid", "input")
SCORE_CHUNK = 32  # images per projection pass in score()

DEVIATIONS = (
    "Map resolution: by default (resolution='grid') the summed per-layer probabilities are returned on "
    "the patch grid; the official code upsamples them bilinearly to 518 px and smooths them with a "
    "Gaussian of sigma 4 px. Both are linear, so '--refiner gaussian' (or resolution='input') gives the "
    "official map; the 'none' refiner row is the unsmoothed map. "
    "Position embedding at 518 px: open_clip resizes it bicubically (antialiased) when loading the "
    "weights; the official model interpolates it bilinearly at its first forward. "
    "Deep prompts: the official text blocks cast them to fp16 before inserting them into the fp32 "
    "stream; here they stay fp32. "
    "Official checkpoints: compound_prompt_projections (unused by the official forward) and the "
    "prefix/suffix buffers are not read; the token embeddings of the two sentences are recomputed from "
    "the backbone's CLIP (identical for the same CLIP weights). "
    "Other backbones: the V-V path starts at the shallowest tapped block (the official code defines "
    "only ViT-L-14-336: block 6). Layers: test.py/train.py/train.sh use blocks 6/12/18/24 (one revision "
    "of test.sh taps block 24 alone); we follow the former. "
    "Training (train_prompts) follows train.py but shuffles with numpy's "
    "generator instead of torch's DataLoader and initialises the prompts from init_seed (official: "
    "the global torch seed 111); images are resized as the backbone preprocesses them (bicubic, "
    "aspect not kept, as official) and masks bilinearly then > 0.5 (as official)."
)

PROMPTS_HELP = (
    "Two ways: (1) the official released checkpoint of zqhang/AnomalyCLIP "
    "(checkpoints/9_12_4_multiscale/epoch_15.pth, trained on VisA, to test on MVTec AD; "
    "checkpoints/9_12_4_multiscale_visa/epoch_15.pth, trained on MVTec AD, to test on VisA; for "
    "ViT-L-14-336 with openai weights at 518 px), or (2) prompts trained on the auxiliary dataset "
    "(VisA for MVTec AD and the reverse) with "
    "bench.methods.anomalyclip.train_prompts(method, backbone, dataset, save=PATH)."
)


# --------------------------------------------------------------------------- the learned prompts


class ObjectAgnosticPrompts(nn.Module):
    """The learned text parts: ``ctx`` ``(2, prompt_length, width)`` (row 0 the normal sentence, row 1
    the anomalous one) and ``deep`` ``(deep_depth - 1, deep_length, width)`` (set i enters text block
    i + 2, 1-based), initialised N(0, 0.02²) as the official ones."""

    def __init__(self, width: int, prompt_length: int = PROMPT_LENGTH, deep_depth: int = DEEP_DEPTH,
                 deep_length: int = DEEP_LENGTH) -> None:
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(2, prompt_length, width) * INIT_STD)
        self.deep = nn.Parameter(torch.randn(deep_depth - 1, deep_length, width) * INIT_STD)


def prompt_tokens(tokenizer, prompt_length: int) -> torch.Tensor:
    """``(2, context)`` tokens of ``"X … X object."`` and ``"X … X damaged object."`` (one X per context vector)."""
    prefix = " ".join(["X"] * prompt_length)
    return tokenizer([f"{prefix} {state.format(OBJECT)}." for state in STATES])


def encode_prompts(model: nn.Module, tokens: torch.Tensor, prompts: ObjectAgnosticPrompts) -> torch.Tensor:
    """``(2, D)`` text features (not normalised) of the two sentences with the learned context and deep prompts.

    ``model``: an open_clip CLIP (batch-first text transformer). The context replaces the token
    embeddings after the start token; deep prompt set i replaces tokens 1..deep_length at the
    input of text block i + 2 (1-based); the end-of-text token is pooled and projected.
    """
    n = prompts.ctx.shape[1]
    x = model.token_embedding(tokens)
    x = torch.cat([x[:, :1], prompts.ctx.to(x.dtype), x[:, 1 + n :]], dim=1) + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(prompts.deep):
            deep = prompts.deep[i - 1].to(x.dtype).expand(len(x), -1, -1)
            x = torch.cat([x[:, :1], deep, x[:, 1 + deep.shape[1] :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(len(x)), tokens.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


# --------------------------------------------------------------------------- checkpoints


def official_to_bench(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``AnomalyCLIP_PromptLearner`` keys → ours (see the module docstring).

    ``ctx_pos``/``ctx_neg`` ``(1, 1, n, width)`` → ``ctx`` ``(2, n, width)``;
    ``compound_prompts_text.<i>`` → ``deep[i]``. Raises ValueError when the keys do not fit.
    """
    ctx = []
    for key in ("ctx_pos", "ctx_neg"):
        if key not in state:
            raise ValueError(f"no {key} (the official prompt learner has ctx_pos, ctx_neg, compound_prompts_text.<i>)")
        value = state[key]
        if value.dim() < 2 or math.prod(value.shape[:-2]) != 1:
            raise ValueError(f"{key} has shape {tuple(value.shape)}; the official one is (1, 1, n_ctx, width)")
        ctx.append(value.reshape(value.shape[-2:]))
    found = sorted(int(k.split(".")[1]) for k in state if k.startswith("compound_prompts_text."))
    if not found or found != list(range(len(found))):
        raise ValueError(f"compound_prompts_text.<i> must be numbered 0..n-1, found {found or 'none'}")
    return {"ctx": torch.stack(ctx), "deep": torch.stack([state[f"compound_prompts_text.{i}"] for i in found])}


def load_prompts(path: Path, prompts: ObjectAgnosticPrompts) -> dict[str, object]:
    """Load a checkpoint (official or ours) into ``prompts``; any misfit is a ``WeightsError`` naming the file."""
    obj = load_checkpoint(path, "AnomalyCLIP", "prompts")
    try:
        if is_bench_checkpoint(obj, FORMAT, FORMAT_VERSION):
            state = dict(obj["state_dict"])
            source = {"kind": "bench", "meta": dict(obj.get("meta", {}))}
        elif isinstance(obj, dict) and (OFFICIAL_KEY in obj or "ctx_pos" in obj):
            state = official_to_bench(dict(obj.get(OFFICIAL_KEY, obj)))
            source = {"kind": "official"}
        else:
            keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(
                f"not an AnomalyCLIP prompt checkpoint (expected the official {{'{OFFICIAL_KEY}': state_dict}} "
                f"or a file saved by bench's save_prompts; found {keys})"
            )
        for key, param in prompts.state_dict().items():
            got = tuple(state[key].shape)
            if got != tuple(param.shape):
                raise ValueError(
                    f"{key} has shape {got}, this method needs {tuple(param.shape)} (ctx: 2 x prompt_length x "
                    f"text width; deep: (deep_depth - 1) x deep_length x text width); the file was made for "
                    f"another backbone or other prompt settings"
                )
        prompts.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"AnomalyCLIP prompts {path}: {exc}") from None
    return source


def save_prompts(method: AnomalyCLIP, path: str | Path) -> Path:
    """Save a bound method's prompts (bench format, ``torch.save``); returns the path."""
    meta = {k: v for k, v in method.provenance.items() if k != "source"}
    return save_learned(path, FORMAT, FORMAT_VERSION, method._require_bound().state_dict(), meta)


# --------------------------------------------------------------------------- the formulas


def class_probabilities(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B, 2, h, w)``: softmax over (normal, anomalous) of cos(token, T) / 0.07; ``tokens`` ``(B, D, h, w)``."""
    logits = torch.einsum("bdhw,dk->bkhw", F.normalize(tokens, dim=1), text) / TEMPERATURE
    return logits.softmax(dim=1)


def anomaly_map(tokens: Sequence[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)``: sum over the layers' projected tokens of the anomalous probability."""
    return sum(class_probabilities(t, text)[:, 1] for t in tokens)


def image_logits(embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B, 2)``: cos(e, T) / 0.07 of image features ``(B, D)``."""
    return F.normalize(embedding, dim=-1) @ text / TEMPERATURE


def training_loss(
    layer_probs: Sequence[torch.Tensor], logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The official training objective (``train.py``) of one batch.

    ``layer_probs``: per layer ``(B, 2, S, S)`` probabilities at the masks' size; ``logits``: ``(B, 2)``
    image logits; ``masks``: ``(B, S, S)`` in {0, 1}; ``labels``: ``(B,)`` image labels in {0, 1}.
    Cross-entropy of the logits against the labels + 4 · Σ_layers (focal(p, mask) + dice(p1, mask) +
    dice(p0, 1 - mask)).
    """
    segmentation = sum(
        focal_loss(p, masks) + dice_loss(p[:, 1], masks) + dice_loss(p[:, 0], 1 - masks) for p in layer_probs
    )
    return F.cross_entropy(logits, labels) + SEGMENTATION_WEIGHT * segmentation


# --------------------------------------------------------------------------- the method


class AnomalyCLIP(Method):
    """AnomalyCLIP zero-shot: learned object-agnostic prompts vs DPAM patch tokens (module docstring).

    checkpoint: the prompts: path to the official checkpoint or to one saved by ``train_prompts`` / ``save_prompts``;
    ``"untrained"`` for fresh prompts (meaningless maps: tests and smoke runs only). Required.
    resolution: ``"grid"`` (default) maps on the patch grid; ``"input"`` upsampled to the input size
    and smoothed (σ = 4 px) as the official test.
    prompt_length, deep_depth, deep_length: official 12, 9, 4 (``--n_ctx``, ``--depth``, ``--t_n_ctx``).
    init_seed: seed of the ``"untrained"`` initialisation.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        resolution: str = "grid",
        prompt_length: int = PROMPT_LENGTH,
        deep_depth: int = DEEP_DEPTH,
        deep_length: int = DEEP_LENGTH,
        init_seed: int = 0,
    ) -> None:
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"anomalyclip resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        self.prompt_shape = {"prompt_length": int(prompt_length), "deep_depth": int(deep_depth),
                             "deep_length": int(deep_length)}
        for name, value in self.prompt_shape.items():
            if value < 1:
                raise ConfigError(f"anomalyclip {name} must be >= 1, got {value}")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.resolution = resolution
        self.init_seed = int(init_seed)

        self.prompts: ObjectAgnosticPrompts | None = None
        self.layers: tuple[str, ...] = ()
        self.provenance: dict[str, object] = {}
        self._backbone: Backbone | None = None
        self._tokens: torch.Tensor | None = None
        self._text: torch.Tensor | None = None
        self._device = torch.device("cpu")
        self.info = MethodInfo(
            name="anomalyclip",
            paper=PAPER,
            arxiv=ARXIV,
            default_backbone=OFFICIAL_BACKBONE,
            needs_auxiliary_training=True,
            settings={
                "checkpoint": self.checkpoint or "required (untrained with --weights random)",
                "sentences": f"'X x{prompt_length} {OBJECT}.' / 'X x{prompt_length} damaged {OBJECT}.' "
                             "(object-agnostic, the X's are learned context vectors)",
                **self.prompt_shape,
                "temperature": TEMPERATURE,
                "layers": "ViT-L-14-336 at 518 px: V-V (DPAM) tokens of blocks 6/12/18/24, V-V path from block 6 "
                          "(others: the backbone's default layers, path from the shallowest)",
                "map": "sum over layers of softmax(cos(proj(ln_post(z)), T) / 0.07)[anomalous]",
                "resolution": resolution,
                "smoothing": f"Gaussian sigma {SIGMA} px at the input size (resolution='input' or --refiner gaussian)",
                "image_score": "softmax(cos(class token @ proj, T) / 0.07)[anomalous], class token of the last "
                               "block without ln_post",
                "precision": "fp32 backbone (backbone_options; official: fp32)",
                "training": f"{SEGMENTATION_WEIGHT:g} x (focal + dice(anomalous) + dice(normal)) summed over layers "
                            f"+ image cross-entropy; Adam lr {TRAIN_LR} betas {TRAIN_BETAS}, batch {TRAIN_BATCH_SIZE}, "
                            f"{TRAIN_EPOCHS} epochs, seed {TRAIN_SEED}; on the auxiliary dataset's test images",
                "init_seed": self.init_seed,
            },
            deviations=DEVIATIONS,
            backbone_options=BACKBONE_OPTIONS,
        )

    def backbone_options(self, backbone: str) -> dict[str, object]:
        """Official layers and size on ViT-L-14-336; every open_clip ViT gets the ``dpam`` extra, in fp32."""
        if backbone in BACKBONE_OPTIONS:
            return dict(BACKBONE_OPTIONS[backbone])
        if backbone in ARCHS:
            return {"precision": "fp32", "extras": {"dpam": {}}}
        return {}

    # -- binding
    def bind(self, backbone: Backbone) -> None:
        """Check the backbone (CLIP text tower, ``dpam`` extra), build the prompts (loaded or fresh)."""
        require_clip(backbone, "anomalyclip", OFFICIAL_BACKBONE, tower=True)
        model = backbone.model
        name = getattr(backbone, "name", type(backbone).__name__)
        extra = dict(backbone.extra_channels)
        layers = tuple(n for n in extra if n.startswith(PREFIX) and n != EMBEDDING)  # in depth order
        if not layers or EMBEDDING not in extra:
            raise ConfigError(
                f"anomalyclip reads the V-V attention (dpam) layers, which backbone {name!r} was not created with: "
                f"create it with the method's backbone_options (the Runner does)"
            )
        text_blocks = len(model.transformer.resblocks)
        if self.prompt_shape["deep_depth"] > text_blocks:
            raise ConfigError(
                f"anomalyclip deep_depth {self.prompt_shape['deep_depth']} exceeds the {text_blocks} text blocks "
                f"of {name}"
            )
        self._device = torch.device(getattr(backbone, "device", "cpu"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            prompts = ObjectAgnosticPrompts(int(model.ln_final.weight.shape[0]), **self.prompt_shape)
        path = learned_source(self.checkpoint, backbone, "anomalyclip", "checkpoint", PROMPTS_HELP)
        source = load_prompts(path, prompts) if path is not None else {"kind": UNTRAINED}
        self.prompts = prompts.to(self._device).eval().requires_grad_(False)
        self.layers = layers
        self._tokens = prompt_tokens(backbone.tokenizer, self.prompt_shape["prompt_length"]).to(self._device)
        self._backbone = backbone
        self._text = None
        self.provenance = {"source": source["kind"], "backbone": name, "weights": str(getattr(backbone, "weights", "")),
                           "input_size": int(backbone.input_size), "layers": list(self.layers), **self.prompt_shape}
        self.info.settings.update(checkpoint=str(path) if path is not None else UNTRAINED, prompts_source=source["kind"],
                                  dpam_layers=list(self.layers))
        if source["kind"] == "bench":
            self.provenance["trained"] = dict(source["meta"].get("trained", {}))
            self.info.settings["prompts_trained"] = self.provenance["trained"]

    def _require_bound(self) -> ObjectAgnosticPrompts:
        if self.prompts is None or self._backbone is None:
            raise ConfigError("anomalyclip: call bind(backbone) before scoring (the Runner does it)")
        return self.prompts

    # -- text
    def encode_text(self) -> torch.Tensor:
        """``(D, 2)`` normalised text embeddings (normal, anomalous) of the current prompts, with autograd."""
        prompts = self._require_bound()
        return F.normalize(encode_prompts(self._backbone.model, self._tokens, prompts).float(), dim=-1).T

    def text(self) -> torch.Tensor:
        """``encode_text()`` without autograd, computed once per binding (the prompts are object-agnostic)."""
        if self._text is None:
            with torch.no_grad():
                self._text = self.encode_text()
        return self._text

    # -- scoring
    def projected(self, features: FeatureSet, rows: slice = slice(None)) -> tuple[list[torch.Tensor], torch.Tensor]:
        """V-V tokens of ``rows`` in the joint space, ``(B, D, h, w)`` per layer, and the image features ``(B, D)``."""
        tokens = [self._backbone.project_tokens(features.layers[n][rows].to(self._device)).float() for n in self.layers]
        return tokens, features.layers[EMBEDDING][rows].flatten(1).to(self._device).float()

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and image scores of each image (``reference`` is ignored: per-image method)."""
        self._require_bound()
        missing = [n for n in (*self.layers, EMBEDDING) if n not in features.layers]
        if missing:
            raise ConfigError(
                f"anomalyclip: the features lack {', '.join(missing)} (have {', '.join(features.layers)})"
            )
        text = self.text()
        maps, scores = [], []
        with torch.no_grad():
            for start in range(0, len(features), SCORE_CHUNK):
                tokens, embedding = self.projected(features, slice(start, start + SCORE_CHUNK))
                maps.append(anomaly_map(tokens, text).cpu())
                scores.append(image_logits(embedding, text).softmax(dim=-1)[:, 1].cpu())
        h, w = features.layers[self.layers[0]].shape[-2:]
        empty = ScoreOutput(torch.zeros(0), torch.zeros(0, h, w))
        out = ScoreOutput(torch.cat(scores), torch.cat(maps)) if maps else empty
        if self.resolution == "input":
            size = int(self._backbone.input_size)
            out.maps = gaussian_smooth(upsample(out.maps, (size, size)), SIGMA)
        return out


@METHODS.register(
    "anomalyclip",
    "AnomalyCLIP (ICLR 2024): object-agnostic learned prompts vs V-V attention patch tokens; needs prompts "
    "trained on an auxiliary dataset (--set method_options.anomalyclip.checkpoint=PATH)",
)
def create(
    checkpoint: str | None = None,
    resolution: str = "grid",
    prompt_length: int = PROMPT_LENGTH,
    deep_depth: int = DEEP_DEPTH,
    deep_length: int = DEEP_LENGTH,
    init_seed: int = 0,
) -> AnomalyCLIP:
    """AnomalyCLIP zero-shot.

    checkpoint: the prompts: official checkpoint (epoch_15.pth), a file saved by
    bench.methods.anomalyclip.train_prompts, or 'untrained' (tests and smoke runs only). Required.
    resolution: 'grid' (the protocol upsamples) or 'input' (upsampled and smoothed as official).
    prompt_length, deep_depth, deep_length: official 12, 9, 4. init_seed: of 'untrained'.
    """
    return AnomalyCLIP(checkpoint=checkpoint, resolution=resolution, prompt_length=prompt_length,
                       deep_depth=deep_depth, deep_length=deep_length, init_seed=init_seed)


# --------------------------------------------------------------------------- training


def train_prompts(
    method: AnomalyCLIP,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int = TRAIN_EPOCHS,
    lr: float = TRAIN_LR,
    batch_size: int = TRAIN_BATCH_SIZE,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``method``'s prompts on an auxiliary dataset's test images and masks (official ``train.py``).

    method: an AnomalyCLIP method; its current prompts are the start (``checkpoint="untrained"`` to
    train from scratch, as official). Bound to ``backbone`` first when it is not already.
    dataset: a bench Dataset or a root; the convention: VisA prompts for MVTec AD and the reverse.
    categories: those trained on (default: all, shuffled together).
    epochs, lr, batch_size, seed: official 15, 1e-3, 8, 111 (Adam, betas (0.5, 0.999)).
    save: write the trained prompts there (``save_prompts``), loadable with ``checkpoint=PATH``.
    max_steps: stop after this many optimiser steps (None: all epochs).
    Returns the loss of every step.
    """
    if not isinstance(method, AnomalyCLIP):
        raise ConfigError(f"train_prompts trains an AnomalyCLIP method, got {type(method).__name__}")
    check_training("train_prompts", epochs, batch_size, lr, max_steps=max_steps)
    data = AuxiliaryData.open(dataset, categories)
    if method._backbone is not backbone:
        method.bind(backbone)
    prompts = method._require_bound()
    size = int(backbone.input_size)

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        features = backbone.features(backbone.preprocess(batch.images))
        tokens, embedding = method.projected(features)
        text = method.encode_text()
        probs = [
            F.interpolate(class_probabilities(t, text), size=(size, size), mode="bilinear", align_corners=False)
            for t in tokens
        ]
        return training_loss(probs, image_logits(embedding, text), batch.masks.to(method._device),
                             batch.labels.to(method._device))

    optimizer = torch.optim.Adam(prompts.parameters(), lr=float(lr), betas=TRAIN_BETAS)
    method._text = None  # the prompts change: text() encodes them again
    losses = fit_on_auxiliary([prompts], optimizer, data, step_loss, epochs=int(epochs), batch_size=int(batch_size),
                              size=size, mosaic_rate=0.0, rng=np.random.default_rng(int(seed)), max_steps=max_steps,
                              progress=progress, desc="anomalyclip prompts")
    trained = training_meta(data, losses, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size), seed=int(seed))
    method.provenance.update(source="bench", trained=trained)
    method.info.settings.update(prompts_source="trained in this process", prompts_trained=trained)
    if save is not None:
        save_prompts(method, save)
    return losses
