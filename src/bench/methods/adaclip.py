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
   (``bench/backbones/clip_extras/adaclip_prompts.py``) runs the prompted visual forward and
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
   ``logits_l``, abnormal channel (the official ``(p1 + 1 - p0) / 2`` equals ``p1``).
5. Image score with hybrid semantic fusion [``HybridSemanticFusion``: the code's "upgraded"
   version, which differs from the paper's description]: ``a = softmax(mean_l logits_l)[1]`` per
   patch; the ``5k`` patches with the largest ``a`` (k = 20); k-means into k clusters on their
   tokens ``z_l`` concatenated over layers; per cluster the mean of its tokens (all layers); ``f``
   = normalised mean of the k cluster means. ``u = normalise(C v)`` (``C``: embed → embed
   [``cls_token_layer``]), ``g = normalise(0.2 f + 0.8 u)``, score = ``softmax(100 g T)[1]``.

Learned parameters (option ``checkpoint``, shared with the extra): the official file
(``pretrained_visa_clinicdb.pth`` for MVTec AD, ``pretrained_mvtec_colondb.pth`` for VisA), a
file saved by ``train_prompts`` / ``save_prompts``, or ``"untrained"`` (meaningless maps: tests
and smoke runs; the default with ``--weights random``). The official file is the trainer's
learnable state dict; keys map to ours as (``read_checkpoint`` in the extra's module):

    clip_model.visual_prompter.static_prompts.<j>             (L, width)      → visual.static.<j>
    clip_model.dynamic_visual_prompt_generator.head.<i>.*     (width, embed)  → visual.generator.<i>.*
    clip_model.text_prompter.static_prompts.<j>               (L, embed)      → text.static.<j>
    clip_model.dynamic_text_prompt_generator.head.<i>.*       (embed, embed)  → text.generator.<i>.*
    clip_model.patch_token_layer.head.<l>.*                   (embed, width)  → patch.<l>.*
    clip_model.cls_token_layer.head.0.*                       (embed, embed)  → image.*

with ``<l>`` the l-th tapped layer in increasing depth (``head.0`` = block 6). The text side's
``static.0`` is never used (the text enters block 0 unprompted), as in the official code; it is
kept so that the keys match. Training (``train_prompts``) follows ``trainer.py`` / ``train.py``:
see its docstring.

    from bench.methods.adaclip import train_prompts
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("adaclip", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"), device="cuda")
    train_prompts(method, backbone, "/data/visa", save="adaclip_visa.pt")
    # then: bench run --methods adaclip --data-root /data/mvtec \\
    #           --set method_options.adaclip.checkpoint=adaclip_visa.pt
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.clip_extras.adaclip_prompts import (
    CHECKPOINT_HELP, FORMAT, FORMAT_VERSION, NAME as EXTRA, OFFICIAL_DEPTH, OFFICIAL_LENGTH, AdaCLIPPrompts,
    HybridPrompts, load_part, parameters_digest, read_checkpoint,
)
from bench.cache import file_digest
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone, Dataset, Method, MethodInfo
from bench.methods._auxiliary import (
    UNTRAINED, AuxiliaryBatch, AuxiliaryData, check_training, dice_loss, fit_on_auxiliary, focal_loss, learned_source,
    official_setting, save_learned, training_meta,
)
from bench.methods._prompts import ObjectPrompts, class_embedding, ensemble_sentences
from bench.methods.aprilgan import ABNORMAL_STATES, NORMAL_STATES, depth_order
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = (
    "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection "
    "(Cao et al., ECCV 2024)"
)
ARXIV = "2407.15795"

# --------------------------------------------------------------------------- official settings

TEMPLATES: tuple[str, ...] = (  # TextEmbebddingLayer.prompt_templates (the states are APRIL-GAN's)
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.",
)
LOGIT_SCALE = 100.0
HSF_ALPHA = 0.2  # weight of the clustered feature in the image feature
K_CLUSTERS = 20  # --k_clusters
TOKENS_PER_CLUSTER = 5  # HSF keeps the 5k most abnormal patches
KMEANS_SEED = 0  # per image (official: numpy's global random state)

OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_SIZE = 518

# train.py / trainer.py / dataset/*.py
TRAIN_LR = 0.01
TRAIN_BETAS = (0.5, 0.999)  # AdamW, default weight decay (0.01)
TRAIN_EPOCHS = 5
TRAIN_BATCH_SIZE = 1
TRAIN_SEED = 111
OFFICIAL_MOSAIC_RATE = {"mvtec": 0.2}  # aug_rate: 2x2 mosaics, 0 for the other datasets

RESOLUTIONS = ("grid", "input")
SCORE_CHUNK = 16  # images per pass in score() (each encodes its own 48 prompted sentences)

DEVIATIONS = (
    "Map resolution: by default (resolution='grid') the softmax of the layer-averaged logits is taken on "
    "the patch grid and the protocol upsamples the map (bilinear); the official code upsamples the logits "
    "to the input size (bilinear, align_corners=True) first (resolution='input' does exactly that), and "
    "then smooths the map with a Gaussian of sigma 4 px, which is bench's 'gaussian' refiner. "
    "HSF: k-means is sklearn's KMeans(k, n_init='auto') as official, seeded per image (random_state=0; "
    "official: numpy's global state, seeded once with 111, so an image's clusters depend on what ran "
    "before it); on grids with fewer than 5k patches k drops to the number of "
    "kept patches (official would fail), and empty clusters are left out of the mean (official: NaN). "
    "Batches: the dynamic text prompts are generated per image, as the official code does at its only "
    "working batch size, 1. Precision: the backbone and the prompted visual forward run in the backbone's "
    "precision (fp16 autocast on CUDA, as official); the text tower, projections and HSF in float32; "
    "training in float32 (official: fp16 autocast, which its README calls occasionally unstable). "
    "Cost: two visual forwards per image as official (the frozen one, which gives the refiners' features "
    "and the dynamic prompts' input, and the prompted one), cached with the features. "
    "Text tower: sequences are cut after the last end-of-text token (exact under the causal mask). "
    "The text prompts have the text tower's width (official: the joint embedding width; equal for CLIP "
    "ViT-B/L). Training (train_prompts): one auxiliary dataset per call (official: two mixed, MVTec AD + "
    "ColonDB or VisA + ClinicDB; bench has no ColonDB/ClinicDB loader); a fixed number of epochs, the last "
    "parameters kept (official: evaluates on the target test set each epoch and keeps the best pixel F1, "
    "i.e. selects on the test data); the image label of a mosaic in the classification loss is 1 if any of "
    "its tiles is anomalous (official: the label of the sample it replaces); mosaics pick a defect "
    "type then an image (official: 4 random images of the category); numpy's generator for the order."
)


# --------------------------------------------------------------------------- formulas


def official_layers(depth: int) -> tuple[str, ...]:
    """The tapped blocks of ``train.py``: multiples of ``depth // 4`` (6/12/18/24 on the 24-block ViT-L)."""
    return tuple(f"block{depth // 4 * i}" for i in range(1, 5))


def prompt_sentences(name: str) -> tuple[list[str], list[str]]:
    """The (normal, abnormal) sentences of object ``name``: states × templates, state-major."""
    name = name.replace("-", " ")
    return ensemble_sentences(name, NORMAL_STATES, TEMPLATES), ensemble_sentences(name, ABNORMAL_STATES, TEMPLATES)


def encode_prompted_text(
    model: nn.Module, ids: torch.Tensor, prompts: HybridPrompts, dynamic: torch.Tensor
) -> torch.Tensor:
    """``(M, D)`` text embeddings (not normalised) of token ids ``(M, context)`` with hybrid prompts.

    ``dynamic``: ``(M, L, width)`` dynamic prompts of each sequence. Before blocks 1..J-1 the L
    tokens after the start token become ``prompts.context(j, dynamic)``; block 0 sees the sentence.
    Positions after the last end-of-text token are dropped: under the causal mask they never
    reach the pooled (end-of-text) token.
    """
    n = int(ids.argmax(dim=-1).max()) + 1
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(ids[:, :n]).to(cast) + model.positional_embedding[:n].to(cast)
    mask = model.attn_mask[:n, :n]
    for block, layer in enumerate(model.transformer.resblocks):
        if 1 <= block < prompts.depth:
            context = prompts.context(block, dynamic).to(x.dtype)
            x = torch.cat([x[:, :1], context, x[:, 1 + prompts.length:]], dim=1)
        x = layer(x, attn_mask=mask)
    x = model.ln_final(x)[torch.arange(len(ids), device=ids.device), ids.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def _grid(logits: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
    """``(B, P, 2)`` patch logits (row-major patches) → ``(B, 2, h, w)``."""
    return logits.transpose(1, 2).reshape(len(logits), 2, *side)


def anomaly_map(logits: Sequence[torch.Tensor], side: tuple[int, int], size: int | None = None) -> torch.Tensor:
    """``softmax(mean over layers of the logits)[abnormal]``: ``(B, h, w)``, or ``(B, size, size)``.

    ``size``: the official order, the mean logits upsampled bilinearly (``align_corners=True``)
    to ``size`` before the softmax.
    """
    mean = _grid(torch.stack(list(logits)).mean(dim=0), side)
    if size is not None:
        mean = F.interpolate(mean, size=(size, size), mode="bilinear", align_corners=True)
    return mean.softmax(dim=1)[:, 1]


def hybrid_semantic_fusion(
    patches: Sequence[torch.Tensor], logits: Sequence[torch.Tensor], k_clusters: int = K_CLUSTERS
) -> torch.Tensor:
    """``(B, D)`` HSF feature of each image from its normalised patch tokens and its logits, ``(B, P, ·)`` per layer.

    Keeps the ``5k`` patches most abnormal under ``softmax(mean logits)``, clusters them (k-means
    on the tokens of all layers side by side), averages each cluster's tokens over its members
    and the layers, and returns the normalised mean of the cluster means.
    """
    from sklearn.cluster import KMeans

    probability = torch.stack(list(logits)).mean(dim=0).softmax(dim=-1)[..., 1]  # (B, P)
    keep = min(probability.shape[1], TOKENS_PER_CLUSTER * int(k_clusters))
    index = probability.topk(keep, dim=1).indices
    selected = torch.stack([z.gather(1, index[..., None].expand(-1, -1, z.shape[-1])) for z in patches], dim=1)
    fused = []
    for tokens in selected:  # (layers, keep, D) of one image
        data = tokens.transpose(0, 1).reshape(keep, -1).detach().float().cpu().numpy()
        clusters = min(int(k_clusters), keep)
        labels = KMeans(n_clusters=clusters, n_init="auto", random_state=KMEANS_SEED).fit_predict(data)
        labels = torch.as_tensor(labels, dtype=torch.long, device=tokens.device)
        member = F.one_hot(labels, clusters).T.to(tokens.dtype)  # (k, keep)
        count = member.sum(dim=1)
        means = (member @ tokens.mean(dim=0))[count > 0] / count[count > 0, None]
        fused.append(means.mean(dim=0))
    return F.normalize(torch.stack(fused), dim=-1)


def image_logits(image: torch.Tensor, text: torch.Tensor, fused: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 2)`` logits ``100 · g · T``: ``g`` = the normalised image feature ``u``, or with HSF's ``f``
    ``normalise(0.2 f + 0.8 u)``."""
    if fused is not None:
        image = F.normalize(HSF_ALPHA * fused + (1 - HSF_ALPHA) * image, dim=-1)
    return LOGIT_SCALE * torch.einsum("bd,bdk->bk", image, text)


def training_loss(
    logits: Sequence[torch.Tensor], image: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
    side: tuple[int, int],
) -> torch.Tensor:
    """Official ``train_one_batch``: focal on the image probabilities against the image ``labels`` ``(B,)``,
    plus, per layer, focal + dice(abnormal, mask) + dice(normal, 1 - mask) on the probabilities of the
    logits upsampled to the mask size (bilinear, ``align_corners=True``).

    The dice terms are taken per mask **row**, averaged over rows: at the official batch size 1,
    ``items['img_mask'].squeeze()`` leaves an ``(H, W)`` mask, which ``BinaryDiceLoss`` reads as H
    samples of W pixels.
    """
    loss = focal_loss(image.softmax(dim=-1)[:, :, None, None], labels.float()[:, None, None])
    rows = masks.flatten(0, 1)  # (B·H, W)
    for layer in logits:
        probs = F.interpolate(_grid(layer, side), size=masks.shape[-2:], mode="bilinear", align_corners=True)
        probs = probs.softmax(dim=1)
        loss = loss + focal_loss(probs, masks)
        loss = loss + dice_loss(probs[:, 1].flatten(0, 1), rows) + dice_loss(probs[:, 0].flatten(0, 1), 1 - rows)
    return loss


# --------------------------------------------------------------------------- the method


class Head(nn.Module):
    """The method's learned parts: text prompts, one patch projection per layer, the image projection."""

    def __init__(self, n_layers: int, width: int, embed_dim: int, text_width: int, length: int, depth: int) -> None:
        super().__init__()
        self.text = HybridPrompts(text_width, embed_dim, length, depth)
        self.patch = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(n_layers)])
        self.image = nn.Linear(embed_dim, embed_dim)


class AdaCLIP(Method):
    """AdaCLIP zero-shot (see the module docstring).

    checkpoint: official checkpoint, a file saved by ``train_prompts``, or ``"untrained"``
    (meaningless maps: tests and smoke runs); None is allowed only with random backbone weights.
    object_name: object name in the prompts (default: the category name).
    resolution: ``"grid"`` (softmax per patch, the protocol upsamples) or ``"input"`` (official order).
    use_hsf: image score with hybrid semantic fusion (official) or from the image feature alone.
    k_clusters, length, depth: HSF clusters (20), prompt length (5), prompting depth (4).
    init_seed: seed of the untrained initialisation.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        object_name: str | None = None,
        resolution: str = "grid",
        use_hsf: bool = True,
        k_clusters: int = K_CLUSTERS,
        length: int = OFFICIAL_LENGTH,
        depth: int = OFFICIAL_DEPTH,
        init_seed: int = 0,
    ) -> None:
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"adaclip resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        if int(k_clusters) < 1 or int(length) < 1 or int(depth) < 1:
            raise ConfigError(f"adaclip k_clusters, length and depth must be >= 1, got {k_clusters}, {length}, {depth}")
        self.prompts: ObjectPrompts[torch.Tensor] = ObjectPrompts("adaclip", object_name)  # token ids
        self.resolution = resolution
        self.use_hsf = bool(use_hsf)
        self.k_clusters = int(k_clusters)
        self.length = int(length)
        self.depth = int(depth)
        self.init_seed = int(init_seed)

        self.head: Head | None = None
        self.extra: AdaCLIPPrompts | None = None
        self.layers: tuple[str, ...] = ()
        self.provenance: dict[str, object] = {}
        self._backbone: Backbone | None = None
        self._device = torch.device("cpu")
        self.info = MethodInfo(
            name="adaclip",
            paper=PAPER,
            arxiv=ARXIV,
            default_backbone=OFFICIAL_BACKBONE,
            needs_auxiliary_training=True,
            settings={
                "checkpoint": self.checkpoint or "required (untrained with --weights random)",
                "prompts": f"hybrid (static + dynamic), length {self.length}, depth {self.depth}, visual and text",
                "sentences": f"{len(NORMAL_STATES)} normal + {len(ABNORMAL_STATES)} abnormal states x "
                             f"{len(TEMPLATES)} templates; per class mean of normalised embeddings, normalised",
                "object_name": self.prompts.object_name or "category name",
                "layers": "blocks depth/4 x (1, 2, 3, 4) (6/12/18/24 on ViT-L-14-336 at 518 px)",
                "logit_scale": LOGIT_SCALE,
                "map": "softmax(mean over layers of 100 cos(P_l t_l, T))[abnormal]",
                "resolution": self.resolution,
                "image_score": f"softmax(100 cos(g, T))[abnormal], g = normalise({HSF_ALPHA} HSF + "
                               f"{1 - HSF_ALPHA:.1f} C v)" if self.use_hsf else "softmax(100 cos(C v, T))[abnormal]",
                "hsf": {"k_clusters": self.k_clusters, "kept_patches": f"{TOKENS_PER_CLUSTER}k",
                        "kmeans_seed": KMEANS_SEED} if self.use_hsf else "off",
                "training": f"per layer focal + row-wise dice (abnormal, normal) + focal on the image score; AdamW lr "
                            f"{TRAIN_LR} betas {TRAIN_BETAS}, batch {TRAIN_BATCH_SIZE}, {TRAIN_EPOCHS} epochs, seed "
                            f"{TRAIN_SEED}; mosaic rate 0.2 on MVTec AD; on the auxiliary dataset's test images",
                "init_seed": self.init_seed,
            },
            deviations=DEVIATIONS,
            backbone_options={OFFICIAL_BACKBONE: self.backbone_options(OFFICIAL_BACKBONE)},
        )

    # -- backbone
    def backbone_options(self, backbone: str) -> dict[str, object]:
        """Every open_clip ViT: the official taps and the prompted-forward extra; 518 px on ViT-L-14-336."""
        import open_clip

        config = open_clip.get_model_config(backbone)
        blocks = (config or {}).get("vision_cfg", {}).get("layers")
        if not isinstance(blocks, int):
            return {}
        extra = {"checkpoint": self.checkpoint, "length": self.length, "depth": self.depth, "init_seed": self.init_seed}
        options: dict[str, object] = {"layers": official_layers(blocks), "extras": {EXTRA: extra}}
        if backbone == OFFICIAL_BACKBONE:
            options["input_size"] = OFFICIAL_SIZE
        return options

    def bind(self, backbone: Backbone) -> None:
        """Check the backbone carries the prompted forward, build the head (loaded or fresh)."""
        extra = getattr(backbone, "extras", {}).get(EXTRA)
        if extra is None:
            raise ConfigError(
                f"adaclip needs an open_clip ViT backbone (e.g. {OFFICIAL_BACKBONE}) created with its backbone options "
                f"(method.backbone_options(name): they add the '{EXTRA}' extra, its prompted visual forward); "
                f"backbone {getattr(backbone, 'name', type(backbone).__name__)!r} has none"
            )
        path = learned_source(self.checkpoint, backbone, "adaclip", "checkpoint", CHECKPOINT_HELP)
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
        self._device = torch.device(backbone.device)
        self.layers = depth_order(extra.layers)
        embed_dim = int(model.visual.output_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            head = Head(len(self.layers), int(backbone.width), embed_dim, int(model.token_embedding.weight.shape[1]),
                        self.length, self.depth)
        source: dict[str, object] = {"kind": UNTRAINED, "init_seed": self.init_seed}
        if path is not None:
            state, source = read_checkpoint(path)
            saved = source.get("layers")
            if saved and list(saved) != list(self.layers):
                raise WeightsError(f"AdaCLIP checkpoint {path}: trained on layers {', '.join(saved)}, the backbone "
                                   f"taps {', '.join(self.layers)}")
            own = {k: v for k, v in state.items() if not k.startswith("visual.")}
            load_part(head, own, path, "text prompts and projections")
        self.head = head.to(self._device).eval().requires_grad_(False)
        self.extra = extra
        self._backbone = backbone
        self.prompts.cache.clear()
        self.provenance = {"source": source["kind"], "backbone": backbone.name, "weights": str(backbone.weights),
                           "input_size": int(backbone.input_size), "layers": list(self.layers)}
        if source["kind"] == "bench":
            self.provenance["trained"] = dict(source["meta"].get("trained", {}))
        self.info.settings.update(checkpoint=str(path) if path is not None else UNTRAINED,
                                  checkpoint_source=source["kind"], prompt_layers=list(self.layers))

    def _require_bound(self) -> tuple[Head, AdaCLIPPrompts]:
        if self.head is None or self.extra is None:
            raise ConfigError("adaclip: call bind(backbone) before scoring (the Runner does it)")
        return self.head, self.extra

    # -- text
    def _token_ids(self, name: str) -> torch.Tensor:
        """``(N, context)`` token ids of the normal then the abnormal sentences of object ``name``."""
        sentences = [s for part in prompt_sentences(name) for s in part]
        return self._backbone.tokenizer(sentences).to(self._device)

    def text(self, clip_image: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """``(B, D, 2)`` normal/abnormal text features of each image (its own dynamic text prompts)."""
        head, _ = self._require_bound()
        ids = torch.stack([self.prompts.get(name, self._token_ids) for name in names])  # (B, N, context)
        b, n = ids.shape[:2]
        dynamic = head.text.dynamic(clip_image).repeat_interleave(n, dim=0)
        z = encode_prompted_text(self._backbone.model, ids.flatten(0, 1), head.text, dynamic).view(b, n, -1)
        normal = len(NORMAL_STATES) * len(TEMPLATES)
        classes = [class_embedding(part) for part in (z[:, :normal], z[:, normal:])]
        return torch.stack(classes, dim=2)

    # -- scoring
    def logits(self, layers: dict[str, torch.Tensor], names: Sequence[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer patch logits ``(B, P, 2)`` and image logits ``(B, 2)`` from the extra's layers."""
        head, _ = self._require_bound()
        tokens = [layers[f"adaclip_{name}"].flatten(2).transpose(1, 2) for name in self.layers]
        text = self.text(layers["adaclip_clip_image"].flatten(1), names)
        patches = [F.normalize(project(t), dim=-1) for project, t in zip(head.patch, tokens)]
        logits = [LOGIT_SCALE * (z @ text) for z in patches]
        fused = hybrid_semantic_fusion(patches, logits, self.k_clusters) if self.use_hsf else None
        image = F.normalize(head.image(layers["adaclip_image"].flatten(1)), dim=-1)
        return logits, image_logits(image, text, fused)

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and image scores of each image (``reference`` is ignored: per-image method)."""
        _, extra = self._require_bound()
        missing = [name for name in extra.channels if name not in features.layers]
        if missing:
            raise ConfigError(
                f"adaclip: the features lack {', '.join(missing)} (the {EXTRA} extra's layers); create the "
                f"backbone with method.backbone_options(name)"
            )
        names = [self.prompts.object_for(features.category)] * len(features)
        side = tuple(features.layers[f"adaclip_{self.layers[0]}"].shape[-2:])
        size = int(self._backbone.input_size) if self.resolution == "input" else None
        maps, scores = [], []
        with torch.no_grad():
            for start in range(0, len(features), SCORE_CHUNK):
                rows = slice(start, start + SCORE_CHUNK)
                part = {name: features.layers[name][rows].to(self._device, torch.float32) for name in extra.channels}
                logits, image = self.logits(part, names[rows])
                maps.append(anomaly_map(logits, side, size).float().cpu())
                scores.append(image.softmax(dim=-1)[:, 1].float().cpu())
        if not maps:
            return ScoreOutput(torch.zeros(0), torch.zeros(0, *((size, size) if size else side)))
        return ScoreOutput(image_scores=torch.cat(scores), maps=torch.cat(maps))


@METHODS.register(
    "adaclip",
    "AdaCLIP (ECCV 2024): hybrid static + dynamic learnable prompts in CLIP's text and image towers; needs "
    "prompts trained on an auxiliary dataset (--set method_options.adaclip.checkpoint=PATH)",
)
def create(
    checkpoint: str | None = None,
    object_name: str | None = None,
    resolution: str = "grid",
    use_hsf: bool = True,
    k_clusters: int = K_CLUSTERS,
    length: int = OFFICIAL_LENGTH,
    depth: int = OFFICIAL_DEPTH,
    init_seed: int = 0,
) -> AdaCLIP:
    """AdaCLIP zero-shot.

    checkpoint: official checkpoint (pretrained_visa_clinicdb.pth / pretrained_mvtec_colondb.pth), a file
    saved by bench.methods.adaclip.train_prompts, or 'untrained' (tests and smoke runs only). Required.
    object_name: object name in the prompts (default: the category name).
    resolution: 'grid' (softmax per patch, the protocol upsamples) or 'input' (official order).
    use_hsf: hybrid semantic fusion in the image score (official: on).
    k_clusters, length, depth: HSF clusters, prompt length, prompting depth (official 20, 5, 4).
    init_seed: seed of the 'untrained' initialisation.
    """
    return AdaCLIP(checkpoint=checkpoint, object_name=object_name, resolution=resolution, use_hsf=use_hsf,
                   k_clusters=k_clusters, length=length, depth=depth, init_seed=init_seed)


# --------------------------------------------------------------------------- checkpoints and training


def save_prompts(method: AdaCLIP, path: str | Path, meta: dict[str, object] | None = None) -> Path:
    """Save a bound method's learned parameters (visual prompts included) in bench's format; returns the path."""
    head, extra = method._require_bound()
    state = {f"visual.{k}": v for k, v in extra.prompts.state_dict().items()} | head.state_dict()
    saved = {**{k: v for k, v in method.provenance.items() if k != "source"}, **(meta or {})}
    return save_learned(path, FORMAT, FORMAT_VERSION, state, saved, layers=list(method.layers), length=method.length,
                        depth=method.depth)


def train_prompts(
    method: AdaCLIP,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int = TRAIN_EPOCHS,
    lr: float = TRAIN_LR,
    batch_size: int = TRAIN_BATCH_SIZE,
    mosaic_rate: float | None = None,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train AdaCLIP's prompts and projections on an auxiliary dataset's test images and masks.

    Follows ``trainer.py`` / ``train.py``: frozen CLIP; learned are the visual prompts (the
    backbone's extra), the text prompts, the patch and image projections, with gradients through
    the frozen towers; loss ``training_loss``; AdamW, lr 0.01, betas (0.5, 0.999), batch 1,
    5 epochs, seed 111; 2x2 mosaics at rate 0.2 on MVTec AD (``mosaic_rate``: None = official).
    method: starting point (``checkpoint="untrained"`` to train from scratch); bound to
    ``backbone`` first if needed, and scores with the new parameters afterwards.
    dataset: a bench Dataset or a root; the field's convention: VisA to test on MVTec AD, MVTec AD
    to test on VisA. save: write the result there (``save_prompts``), loadable as ``checkpoint``.
    max_steps: stop after this many optimiser steps. Returns the loss of every step.
    """
    if not isinstance(method, AdaCLIP):
        raise ConfigError(f"train_prompts trains an AdaCLIP method, got {type(method).__name__}")
    data = AuxiliaryData.open(dataset, categories)
    rate = float(official_setting(mosaic_rate, OFFICIAL_MOSAIC_RATE, data, "train_prompts", "mosaic_rate", 0.0))
    check_training("train_prompts", epochs, batch_size, lr, rate, max_steps)
    if method._backbone is not backbone:
        method.bind(backbone)
    head, extra = method._require_bound()
    side = (backbone.grid, backbone.grid)

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        x = backbone.preprocess(batch.images).to(method._device)
        logits, image = method.logits(extra.forward(x), [method.prompts.object_for(c) for c in batch.categories])
        return training_loss(logits, image, batch.masks.to(method._device), batch.labels.to(method._device), side)

    modules = (extra.prompts, head)
    optimizer = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=float(lr), betas=TRAIN_BETAS)
    losses = fit_on_auxiliary(modules, optimizer, data, step_loss, epochs=int(epochs), batch_size=int(batch_size),
                              size=int(backbone.input_size), mosaic_rate=rate, rng=np.random.default_rng(int(seed)),
                              max_steps=max_steps, progress=progress, desc="adaclip prompts")
    extra.source = {"trained_sha256": parameters_digest(extra.prompts)}  # a new feature-cache identity
    meta = training_meta(data, losses, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                         mosaic_rate=rate, seed=int(seed))
    method.provenance = {**method.provenance, "source": "bench", "trained": meta}
    method.info.settings.update(checkpoint_source="trained in this process", trained=meta)
    if save is not None:
        extra.source = {"checkpoint_sha256": file_digest(save_prompts(method, save))}
    return losses
