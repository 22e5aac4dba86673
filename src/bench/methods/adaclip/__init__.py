"""AdaCLIP: zero-shot anomaly detection with hybrid (static + dynamic) learnable prompts in CLIP.

Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024, arXiv 2407.15795; official code caoyunkang/AdaCLIP (read for the facts:
``method/adaclip.py``, ``method/trainer.py``, ``train.py``, ``test.py``, ``loss.py``,
``dataset/base_dataset.py``; this is our own code). Per-image; the prompts and projections are
trained once on auxiliary data (official: MVTec AD + ColonDB to test on VisA, VisA + ClinicDB to
test on MVTec AD).

Pipeline (official names in brackets), prompt length L = 5, prompting depth J = 4, open_clip
ViT-L-14-336 with OpenAI weights at 518 px, taps at blocks 6/12/18/24 (``depth // 4`` multiples):

1. Visual [``encode_image``]: the backbone's ``adaclip_prompts`` extra
   (``visual.py``, computed in the backbone's pass) runs the prompted visual forward and
   gives the patch tokens ``t_l`` of each tapped block, the prompted image embedding ``v`` and the
   frozen CLIP embedding ``e`` of the image.
2. Text [``TextEmbebddingLayer``, ``PromptLayer.forward_text``], per image: APRIL-GAN's 7 normal /
   5 abnormal states × 4 templates (``TEMPLATES``), the object name with '-' read as ' '. In the
   text tower the sentence enters block 0 untouched; before blocks 1..J-1 the L tokens after the
   start token are replaced by the hybrid text prompt ``s_j + d(e)`` (``d``: L linear layers
   ``embed_dim → text width`` on the image's ``e``). Per class, the mean of the normalised
   sentence embeddings, normalised: ``T`` ``(D, 2)`` per image.
3. Patch logits [``patch_token_layer``]: ``z_l = normalise(P_l t_l)`` (``P_l``: width → embed_dim,
   one per layer), ``logits_l = 100 · z_l T``, 2 per patch.
4. Map [``visual_text_similarity``, ``aggregation=True``]: the softmax of the mean over layers of
   ``logits_l``, abnormal channel (the official ``(p1 + 1 - p0) / 2`` equals ``p1``), on the patch
   grid: what refiners consume. The official code evaluates the mean logits upsampled to the input
   size (bilinear, ``align_corners=True``) before the softmax, smoothed with a Gaussian of σ = 4 px
   [``method/trainer.py`` ``evaluation``, called by ``test.py``]: ``score`` returns that map as
   ``evaluated`` (what ``none`` is scored on).
5. Image score with hybrid semantic fusion [``HybridSemanticFusion``: the code's "upgraded"
   version, which differs from the paper's description]: ``a = softmax(mean_l logits_l)[1]`` per
   patch; the ``5k`` patches with the largest ``a`` (k = 20); k-means into k clusters on their
   tokens ``z_l`` concatenated over layers; per cluster the mean of its tokens (all layers); ``f``
   = normalised mean of the k cluster means. ``u = normalise(C v)`` (``C``: embed → embed
   [``cls_token_layer``]), ``g = normalise(0.2 f + 0.8 u)``, score = ``softmax(100 g T)[1]``.

Learned parameters (option ``checkpoint``, shared with the extra): the official file
(``pretrained_visa_clinicdb.pth`` for MVTec AD, ``pretrained_mvtec_colondb.pth`` for VisA), a
file saved by ``train`` / ``method.save``, or ``"untrained"`` (meaningless maps: tests
and smoke runs; the default with ``--weights random``). The official file is the trainer's
learnable state dict; keys map to ours as (``checkpoint.read_checkpoint``, called once, by the extra):

    clip_model.visual_prompter.static_prompts.<j>             (L, width)      → visual.static.<j>
    clip_model.dynamic_visual_prompt_generator.head.<i>.*     (width, embed)  → visual.generator.<i>.*
    clip_model.text_prompter.static_prompts.<j>               (L, embed)      → text.static.<j>
    clip_model.dynamic_text_prompt_generator.head.<i>.*       (embed, embed)  → text.generator.<i>.*
    clip_model.patch_token_layer.head.<l>.*                   (embed, width)  → patch.<l>.*
    clip_model.cls_token_layer.head.0.*                       (embed, embed)  → image.*

with ``<l>`` the l-th tapped layer in increasing depth (``head.0`` = block 6). The text side's
``static.0`` is never used (the text enters block 0 unprompted), as in the official code; it is
kept so that the keys match. Training (``bench.methods.adaclip.train.train``) follows ``trainer.py`` /
``train.py``: see its docstring.

    from bench.methods.adaclip.train import train
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("adaclip", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"), device="cuda")
    train(method, backbone, "/data/visa", save="adaclip_visa.pt")
    # then: bench run --methods adaclip --data-root /data/mvtec \\
    #           --set method_options.adaclip.checkpoint=adaclip_visa.pt

Layout: ``model.py`` (prompts, text tower, projections, map, HSF), ``visual.py`` (the backbone extra:
the prompted visual forward), ``checkpoint.py`` (official and bench files), ``train.py`` (``train``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone
from bench.methods._clip.adapters import depth_order
from bench.methods._clip.prompts import ABNORMAL_STATES, NORMAL_STATES, ObjectPrompts, class_embedding
from bench.methods._learned import LearnedMethod, learned_source
from bench.methods.adaclip.checkpoint import CHECKPOINT_HELP, FORMAT, load_part
from bench.methods.adaclip.model import (
    HSF_ALPHA,
    K_CLUSTERS,
    KMEANS_SEED,
    LOGIT_SCALE,
    OFFICIAL_DEPTH,
    OFFICIAL_LENGTH,
    TEMPLATES,
    TOKENS_PER_CLUSTER,
    Head,
    anomaly_map,
    encode_prompted_text,
    hybrid_semantic_fusion,
    image_logits,
    official_layers,
    prompt_sentences,
)
from bench.methods.adaclip.train import TRAINING
from bench.methods.adaclip.visual import NAME as EXTRA
from bench.methods.adaclip.visual import AdaCLIPPrompts
from bench.ops import gaussian_smooth
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = (
    "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection "
    "(Cao et al., ECCV 2024)"
)
ARXIV = "2407.15795"

OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_SIZE = 518
SCORE_CHUNK = 16  # images per pass in score() (each encodes its own 48 prompted sentences)
SIGMA = 4.0  # method/trainer.py evaluation (test.py dataset mode): gaussian_filter(anomaly_map, sigma=4) at the input size

DEVIATIONS = (
    "Maps: 'none' is scored on the official map (the layer-averaged logits upsampled to the input size, "
    "bilinear, align_corners=True, then the softmax, then a Gaussian of sigma 4 px; the protocol's "
    "per-category min-max rescale on top, monotone); the refiners consume the map with the softmax on "
    "the patch grid, unsmoothed. "
    "Activation: exact GELU, as the official build (CLIP(**model_cfg) without quick_gelu, OpenAI's "
    "weights loaded into it; its released checkpoints were trained on those features). "
    "HSF: k-means is sklearn's KMeans(k, n_init='auto') as official, seeded per image (random_state=0; "
    "official: numpy's global state, seeded once with 111, so an image's clusters depend on what ran "
    "before it); the 5k most abnormal patches are kept (all of them on smaller grids, as official), "
    "k drops to the number of kept patches only when fewer than k are kept (official would fail), and "
    "empty clusters are left out of the mean (official: NaN). "
    "Batches: the dynamic text prompts are generated per image, as the official code does at its only "
    "working batch size, 1. Precision: the backbone and the prompted visual forward run in the backbone's "
    "precision (fp16 autocast on CUDA, as official), the hybrid prompts rounded to fp16 as official "
    "(.half()); the text tower, projections and HSF in float32; "
    "training in float32 (official: fp16 autocast, which its README calls occasionally unstable). "
    "Cost: two visual forwards per image as official (the frozen one, which gives the refiners' features "
    "and the dynamic prompts' input, and the prompted one), cached with the features. "
    "Text tower: sequences are cut after the last end-of-text token (exact under the causal mask). "
    "The text prompts have the text tower's width (official: the joint embedding width; equal for CLIP "
    "ViT-B/L). Training (train): one auxiliary dataset per call (official: two mixed, MVTec AD + "
    "ColonDB or VisA + ClinicDB; bench has no ColonDB/ClinicDB loader); a fixed number of epochs, the last "
    "parameters kept (official: evaluates on the target test set each epoch and keeps the best pixel F1, "
    "i.e. selects on the test data); the image label of a mosaic in the classification loss is 1 if any of "
    "its tiles is anomalous (official: the label of the sample it replaces); mosaics pick a defect "
    "type then an image (official: 4 random images of the category); numpy's generator for the order."
)



@METHODS.register(
    "adaclip",
    "AdaCLIP (ECCV 2024): hybrid static + dynamic learnable prompts in CLIP's text and image towers; needs "
    "prompts trained on an auxiliary dataset (--set method_options.adaclip.checkpoint=PATH)",
)
class AdaCLIP(LearnedMethod):
    """AdaCLIP zero-shot (see the module docstring).

    checkpoint: official checkpoint (pretrained_visa_clinicdb.pth / pretrained_mvtec_colondb.pth), a file saved
    by ``train`` / ``method.save``, or ``"untrained"`` (meaningless maps: tests and smoke runs); None is allowed
    only with random backbone weights.
    object_name: object name in the prompts (default: the category name).
    use_hsf: image score with hybrid semantic fusion (official) or from the image feature alone.
    k_clusters, length, depth: HSF clusters (20), prompt length (5), prompting depth (4).
    init_seed: seed of the untrained initialisation.
    """

    name = "adaclip"
    checkpoint_help = CHECKPOINT_HELP
    checkpoint_format = FORMAT

    def __init__(self, checkpoint: str | Path | None = None, object_name: str | None = None, use_hsf: bool = True,
                 k_clusters: int = K_CLUSTERS, length: int = OFFICIAL_LENGTH, depth: int = OFFICIAL_DEPTH,
                 init_seed: int = 0) -> None:
        if int(k_clusters) < 1 or int(length) < 1 or int(depth) < 1:
            raise ConfigError(f"adaclip k_clusters, length and depth must be >= 1, got {k_clusters}, {length}, {depth}")
        self.prompts: ObjectPrompts[torch.Tensor] = ObjectPrompts("adaclip", object_name)  # token ids
        self.use_hsf = bool(use_hsf)
        self.k_clusters = int(k_clusters)
        self.length = int(length)
        self.depth = int(depth)
        self.extra: AdaCLIPPrompts | None = None
        super().__init__(
            checkpoint, init_seed,
            settings={
                "prompts": f"hybrid (static + dynamic), length {self.length}, depth {self.depth}, visual and text",
                "sentences": f"{len(NORMAL_STATES)} normal + {len(ABNORMAL_STATES)} abnormal states x "
                             f"{len(TEMPLATES)} templates; per class mean of normalised embeddings, normalised",
                "object_name": self.prompts.object_name or "category name",
                "layers": "blocks depth/4 x (1, 2, 3, 4) (6/12/18/24 on ViT-L-14-336 at 518 px)",
                "logit_scale": LOGIT_SCALE,
                "map": "softmax(mean over layers of 100 cos(P_l t_l, T))[abnormal], softmax on the patch grid "
                       "(what refiners consume)",
                "evaluated_map": f"official: the mean logits upsampled to the input size (bilinear, align_corners=True) "
                                 f"before the softmax, then a Gaussian of sigma {SIGMA} px ('none' is scored on it)",
                "image_score": f"softmax(100 cos(g, T))[abnormal], g = normalise({HSF_ALPHA} HSF + "
                               f"{1 - HSF_ALPHA:.1f} C v)" if self.use_hsf else "softmax(100 cos(C v, T))[abnormal]",
                "hsf": {"k_clusters": self.k_clusters, "kept_patches": f"{TOKENS_PER_CLUSTER}k",
                        "kmeans_seed": KMEANS_SEED} if self.use_hsf else "off",
                "training": TRAINING,
                "parity": "compared with caoyunkang/AdaCLIP@e27ee32b; max |Δ| maps 5.7e-6; "
                          "image scores 1.1e-5 (2.1e-2 against the official k-means draws)",
            },
            paper=PAPER, arxiv=ARXIV, default_backbone=OFFICIAL_BACKBONE, deviations=DEVIATIONS,
        )
        self.info.backbone_options[OFFICIAL_BACKBONE] = self.backbone_options(OFFICIAL_BACKBONE)

    # -- backbone
    def backbone_options(self, backbone: str) -> dict[str, object]:
        """Every open_clip ViT: the official taps, exact GELU and the prompted-forward extra; 518 px on ViT-L-14-336."""
        import open_clip

        config = open_clip.get_model_config(backbone)
        blocks = (config or {}).get("vision_cfg", {}).get("layers")
        if not isinstance(blocks, int):
            return {}
        extra = {"checkpoint": self.checkpoint, "length": self.length, "depth": self.depth, "init_seed": self.init_seed}
        # exact GELU: the official factory always builds CLIP(**model_cfg) (no quick_gelu) and loads
        # OpenAI's weights into it (method/custom_clip.py create_model)
        options: dict[str, object] = {"layers": official_layers(blocks), "quick_gelu": False,
                                      "extras": {AdaCLIPPrompts: extra}}
        if backbone == OFFICIAL_BACKBONE:
            options["input_size"] = OFFICIAL_SIZE
        return options

    def build(self, backbone: Backbone) -> Head:
        """Check the backbone carries this method's prompted forward; a fresh head (text prompts, projections)."""
        extra = getattr(backbone, "extras", {}).get(EXTRA)
        if extra is None:
            raise ConfigError(
                f"adaclip needs an open_clip ViT backbone (e.g. {OFFICIAL_BACKBONE}) created with its backbone options "
                f"(method.backbone_options(name): they add the '{EXTRA}' extra, its prompted visual forward); "
                f"backbone {getattr(backbone, 'name', type(backbone).__name__)!r} has none"
            )
        path = learned_source(self.checkpoint, backbone, "adaclip", "checkpoint", CHECKPOINT_HELP)  # no file read
        if path != extra.checkpoint or (extra.length, extra.depth) != (self.length, self.depth):
            raise ConfigError(
                f"adaclip: the backbone's {EXTRA} extra (checkpoint {extra.checkpoint}, length {extra.length}, depth "
                f"{extra.depth}) differs from the method's (checkpoint {path}, length {self.length}, depth "
                f"{self.depth}); create the backbone with method.backbone_options(name)"
            )
        model = backbone.model
        if self.depth > len(model.transformer.resblocks) or getattr(model, "text_pool_type", "argmax") != "argmax":
            raise ConfigError(
                f"adaclip needs a CLIP text tower with at least depth={self.depth} blocks and end-of-text pooling"
            )
        self.extra = extra
        self.layers = depth_order(extra.layers)
        embed_dim = int(model.visual.output_dim)
        return Head(len(self.layers), int(backbone.width), embed_dim, int(model.token_embedding.weight.shape[1]),
                    self.length, self.depth)

    def load(self, path: Path, module: Head) -> dict[str, object]:
        """The head's parts of the checkpoint the backbone's extra has read (the file is read once)."""
        source = dict(self.extra.file_info)
        saved = source.get("layers")
        if saved and list(saved) != list(self.layers):
            raise WeightsError(f"AdaCLIP checkpoint {path}: trained on layers {', '.join(saved)}, the backbone "
                               f"taps {', '.join(self.layers)}")
        own = {k: v for k, v in self.extra.state.items() if not k.startswith("visual.")}
        load_part(module, own, path, "text prompts and projections")
        return source

    def on_bind(self, backbone: Backbone) -> None:
        self.prompts.cache.clear()

    def checkpoint_fields(self) -> dict[str, object]:
        return {"length": self.length, "depth": self.depth}

    def state_to_save(self) -> dict[str, torch.Tensor]:
        """The visual prompts (the backbone extra's) and the head."""
        head = self.require_bound()
        return {f"visual.{k}": v for k, v in self.extra.prompts.state_dict().items()} | head.state_dict()

    # -- text
    def _token_ids(self, name: str) -> torch.Tensor:
        """``(N, context)`` token ids of the normal then the abnormal sentences of object ``name``."""
        sentences = [s for part in prompt_sentences(name) for s in part]
        return self.backbone.tokenizer(sentences).to(self.device)

    def text(self, clip_image: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """``(B, D, 2)`` normal/abnormal text features of each image (its own dynamic text prompts)."""
        head = self.require_bound()
        ids = torch.stack([self.prompts.get(name, self._token_ids) for name in names])  # (B, N, context)
        b, n = ids.shape[:2]
        dynamic = head.text.dynamic(clip_image).repeat_interleave(n, dim=0)
        z = encode_prompted_text(self.backbone.model, ids.flatten(0, 1), head.text, dynamic).view(b, n, -1)
        normal = len(prompt_sentences(names[0])[0]) if names else 0  # normal sentences come first
        classes = [class_embedding(part) for part in (z[:, :normal], z[:, normal:])]
        return torch.stack(classes, dim=2)

    # -- scoring
    def logits(self, layers: dict[str, torch.Tensor], names: Sequence[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer patch logits ``(B, P, 2)`` and image logits ``(B, 2)`` from the extra's layers."""
        head = self.require_bound()
        tokens = [layers[f"adaclip_{name}"].flatten(2).transpose(1, 2) for name in self.layers]
        text = self.text(layers["adaclip_clip_image"].flatten(1), names)
        patches = [F.normalize(project(t), dim=-1) for project, t in zip(head.patch, tokens)]
        logits = [LOGIT_SCALE * (z @ text) for z in patches]
        fused = hybrid_semantic_fusion(patches, logits, self.k_clusters) if self.use_hsf else None
        image = F.normalize(head.image(layers["adaclip_image"].flatten(1)), dim=-1)
        return logits, image_logits(image, text, fused)

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and image scores of each image (``reference`` is ignored: per-image method)."""
        self.require_bound()
        channels = self.extra.channels
        missing = [name for name in channels if name not in features.layers]
        if missing:
            raise ConfigError(
                f"adaclip: the features lack {', '.join(missing)} (the {EXTRA} extra's layers); create the "
                f"backbone with method.backbone_options(name)"
            )
        names = [self.prompts.object_for(features.category)] * len(features)
        side = tuple(features.layers[f"adaclip_{self.layers[0]}"].shape[-2:])
        size = int(self.backbone.input_size)
        maps, evaluated, scores = [], [], []
        with torch.no_grad():
            for start in range(0, len(features), SCORE_CHUNK):
                rows = slice(start, start + SCORE_CHUNK)
                part = {name: features.layers[name][rows].to(self.device, torch.float32) for name in channels}
                logits, image = self.logits(part, names[rows])
                maps.append(anomaly_map(logits, side).float().cpu())
                evaluated.append(gaussian_smooth(anomaly_map(logits, side, size).cpu(), SIGMA))
                scores.append(image.softmax(dim=-1)[:, 1].float().cpu())
        if not maps:
            return ScoreOutput(torch.zeros(0), torch.zeros(0, *side), torch.zeros(0, size, size))
        return ScoreOutput(image_scores=torch.cat(scores), maps=torch.cat(maps), evaluated=torch.cat(evaluated))
