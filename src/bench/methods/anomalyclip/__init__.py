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
   (``dpam.py``, the backbone extra ``DPAM``): the V-V attention path of blocks 6..24 of
   ViT-L-14-336 at 518 px, tapped at blocks 6/12/18/24, and the official image feature.
3. Map [``compute_similarity``, ``get_similarity_map``, ``test.py``]: per tapped layer the V-V patch
   tokens go through ``ln_post`` and ``proj`` and are L2-normalised; p = softmax(cos(z, T) / 0.07)
   over the two classes and the layer's map is the anomalous probability [``(p1 + 1 - p0) / 2`` =
   p1]; the map is the sum over the layers, on the patch grid: what refiners consume. The official
   code evaluates it upsampled bilinearly (``align_corners=False``) to 518 px and smoothed with a
   Gaussian of σ = 4 px (``scipy.ndimage.gaussian_filter``): ``score`` returns that map as
   ``evaluated`` (what ``none`` is scored on).
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
- a path to prompts trained by ``train`` (``train.py``) and saved with ``method.save``:
  ``{"format": "bench.anomalyclip.prompts", "version": 1, "state_dict": {"ctx", "deep"},
  "meta"}``;
- ``"untrained"``: N(0, 0.02²) initialisation as the official one, seeded by ``init_seed``;
  meaningless maps, for tests and smoke runs only.

Training (``bench.methods.anomalyclip.train.train``, following the official ``train.py``): frozen CLIP,
only the prompts learn, on the auxiliary dataset's test images and masks (all categories shuffled
together). Per batch: image loss = cross-entropy of cos(e, T) / 0.07 against the image's label (the
dataset's); per layer, p upsampled bilinearly to the input size, focal(p, mask) + dice(p1, mask) +
dice(p0, 1 - mask) [``loss.py``]; loss = 4 · Σ_layers + image loss. Adam lr 1e-3, betas (0.5, 0.999),
batch 8, 15 epochs, seed 111.

    from bench.methods.anomalyclip.train import train
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("anomalyclip", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"), device="cuda")
    train(method, backbone, "/data/visa", save="anomalyclip_visa.pt")
    # then: bench run --methods anomalyclip --data-root /data/mvtec \\
    #           --set method_options.anomalyclip.checkpoint=anomalyclip_visa.pt

Layout: ``model.py`` (learned prompts, text tower, map and score), ``dpam.py`` (the backbone extra),
``checkpoint.py`` (official and bench files), ``train.py`` (``train``); the method below.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from bench.backbones.openclip import ARCHS
from bench.errors import ConfigError
from bench.interfaces import Backbone
from bench.methods._clip.prompts import require_clip
from bench.methods._learned import LearnedMethod
from bench.methods.anomalyclip.checkpoint import FORMAT, load_prompts
from bench.methods.anomalyclip.dpam import DPAM, EMBEDDING, PREFIX
from bench.methods.anomalyclip.model import (
    DEEP_DEPTH,
    DEEP_LENGTH,
    OBJECT,
    PROMPT_LENGTH,
    TEMPERATURE,
    ObjectAgnosticPrompts,
    anomaly_map,
    encode_prompts,
    image_logits,
    prompt_tokens,
)
from bench.methods.anomalyclip.train import TRAINING
from bench.ops import gaussian_smooth, upsample
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection (Zhou et al., ICLR 2024)"
ARXIV = "2310.18961"

SIGMA = 4.0  # test.py: gaussian_filter(sigma=4) at the input size
OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_LAYERS = ("block6", "block12", "block18", "block24")  # --features_list 6 12 18 24
BACKBONE_OPTIONS: dict[str, dict[str, object]] = {
    OFFICIAL_BACKBONE: {
        "layers": OFFICIAL_LAYERS, "input_size": 518, "precision": "fp32",
        "extras": {DPAM: {"start": "block6"}},  # DAPM_replace(DPAM_layer=20): blocks 6..24
    },
}
SCORE_CHUNK = 32  # images per projection pass in score()

# Measured by tests/parity (the README parity table shows the same line).
PARITY = "compared with zqhang/AnomalyCLIP@45ed4dd3; max |Δ| maps 1.9e-6; image scores 2.2e-7"

DEVIATIONS = (
    "Maps: 'none' is scored on the official map (the summed per-layer probabilities upsampled bilinearly "
    "to the input size, smoothed with a Gaussian of sigma 4 px; the protocol's per-category min-max "
    "rescale on top, monotone); the refiners consume the unsmoothed map on the patch grid (the trainable "
    "refiners size their networks by the coarse map; an input-size coarse map makes ARD run out of memory). "
    "Activation: QuickGELU, as the official CLIP build (bench's default for the 'openai' tag). "
    "Position embedding at 518 px: open_clip resizes it bicubically (antialiased) when loading the "
    "weights; the official model interpolates it bilinearly at its first forward. "
    "Deep prompts: rounded to fp16 before they enter the fp32 text stream, as the official text "
    "blocks do (.half()). "
    "Official checkpoints: compound_prompt_projections (unused by the official forward) and the "
    "prefix/suffix buffers are not read; the token embeddings of the two sentences are recomputed from "
    "the backbone's CLIP (identical for the same CLIP weights). "
    "Other backbones: the V-V path starts at the shallowest tapped block (the official code defines "
    "only ViT-L-14-336: block 6). Layers: test.py/train.py/train.sh use blocks 6/12/18/24 (one revision "
    "of test.sh taps block 24 alone); we follow the former. "
    "Training (train) follows train.py but shuffles with numpy's "
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
    "bench.methods.anomalyclip.train.train(method, backbone, dataset, save=PATH)."
)



@METHODS.register(
    "anomalyclip",
    "AnomalyCLIP (ICLR 2024): object-agnostic learned prompts vs V-V attention patch tokens; needs prompts "
    "trained on an auxiliary dataset (--set method_options.anomalyclip.checkpoint=PATH)",
)
class AnomalyCLIP(LearnedMethod):
    """AnomalyCLIP zero-shot: learned object-agnostic prompts vs DPAM patch tokens (module docstring).

    checkpoint: the prompts: the official checkpoint (epoch_15.pth), a file saved by ``train`` /
    ``method.save``, or ``"untrained"`` for fresh prompts (meaningless maps: tests and smoke runs only). Required.
    prompt_length, deep_depth, deep_length: official 12, 9, 4 (``--n_ctx``, ``--depth``, ``--t_n_ctx``).
    init_seed: seed of the ``"untrained"`` initialisation.
    """

    name = "anomalyclip"
    checkpoint_help = PROMPTS_HELP
    checkpoint_format = FORMAT

    def __init__(self, checkpoint: str | Path | None = None, prompt_length: int = PROMPT_LENGTH,
                 deep_depth: int = DEEP_DEPTH, deep_length: int = DEEP_LENGTH, init_seed: int = 0) -> None:
        self.prompt_shape = {"prompt_length": int(prompt_length), "deep_depth": int(deep_depth),
                             "deep_length": int(deep_length)}
        for name, value in self.prompt_shape.items():
            if value < 1:
                raise ConfigError(f"anomalyclip {name} must be >= 1, got {value}")
        self._tokens: torch.Tensor | None = None
        self._text: torch.Tensor | None = None
        super().__init__(
            checkpoint, init_seed,
            settings={
                "sentences": f"'X x{prompt_length} {OBJECT}.' / 'X x{prompt_length} damaged {OBJECT}.' "
                             "(object-agnostic, the X's are learned context vectors)",
                **self.prompt_shape,
                "temperature": TEMPERATURE,
                "layers": "ViT-L-14-336 at 518 px: V-V (DPAM) tokens of blocks 6/12/18/24, V-V path from block 6 "
                          "(others: the backbone's default layers, path from the shallowest)",
                "map": "sum over layers of softmax(cos(proj(ln_post(z)), T) / 0.07)[anomalous]",
                "evaluated_map": f"official: the map upsampled to the input size (bilinear), then a Gaussian of "
                                 f"sigma {SIGMA} px ('none' is scored on it)",
                "image_score": "softmax(cos(class token @ proj, T) / 0.07)[anomalous], class token of the last "
                               "block without ln_post",
                "precision": "fp32 backbone (backbone_options; official: fp32)",
                "training": TRAINING,
                "parity": PARITY,
            },
            paper=PAPER, arxiv=ARXIV, default_backbone=OFFICIAL_BACKBONE, deviations=DEVIATIONS,
            backbone_options=BACKBONE_OPTIONS,
        )

    def backbone_options(self, backbone: str) -> dict[str, object]:
        """Official layers and size on ViT-L-14-336; every open_clip ViT gets the ``dpam`` extra, in fp32."""
        if backbone in BACKBONE_OPTIONS:
            return dict(BACKBONE_OPTIONS[backbone])
        if backbone in ARCHS:
            return {"precision": "fp32", "extras": {DPAM: {}}}
        return {}

    # -- binding
    def build(self, backbone: Backbone) -> ObjectAgnosticPrompts:
        """Check the backbone (CLIP text tower, ``dpam`` extra); fresh prompts of its text width."""
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
        self.layers = layers
        return ObjectAgnosticPrompts(int(model.ln_final.weight.shape[0]), **self.prompt_shape)

    def load(self, path: Path, module: ObjectAgnosticPrompts) -> dict[str, object]:
        return load_prompts(path, module)

    def on_bind(self, backbone: Backbone) -> None:
        self.provenance.update(self.prompt_shape)
        self._tokens = prompt_tokens(backbone.tokenizer, self.prompt_shape["prompt_length"]).to(self.device)
        self.forget_text()

    # -- text
    def encode_text(self) -> torch.Tensor:
        """``(D, 2)`` normalised text embeddings (normal, anomalous) of the current prompts, with autograd."""
        prompts = self.require_bound()
        return F.normalize(encode_prompts(self.backbone.model, self._tokens, prompts).float(), dim=-1).T

    def text(self) -> torch.Tensor:
        """``encode_text()`` without autograd, computed once per binding (the prompts are object-agnostic)."""
        if self._text is None:
            with torch.no_grad():
                self._text = self.encode_text()
        return self._text

    def forget_text(self) -> None:
        """Drop the text embeddings computed so far (the prompts changed)."""
        self._text = None

    # -- scoring
    def projected(self, features: FeatureSet, rows: slice = slice(None)) -> tuple[list[torch.Tensor], torch.Tensor]:
        """V-V tokens of ``rows`` in the joint space, ``(B, D, h, w)`` per layer, and the image features ``(B, D)``."""
        tokens = [self.backbone.project_tokens(features.layers[n][rows].to(self.device)).float() for n in self.layers]
        return tokens, features.layers[EMBEDDING][rows].flatten(1).to(self.device).float()

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and image scores of each image (``reference`` is ignored: per-image method)."""
        self.require_bound()
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
        size = int(self.backbone.input_size)
        out.evaluated = gaussian_smooth(upsample(out.maps, (size, size), align_corners=False), SIGMA)
        return out
