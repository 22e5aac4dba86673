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
   *before* the softmax and evaluates that map (no smoothing) [``test.py``]: ``score`` returns it as
   ``evaluated`` (what ``none`` is scored on), and the map with the softmax on the patch grid as the
   coarse map refiners consume (trainable refiners are sized by the coarse grid).
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
- a path to adapters trained by ``train`` (``train.py``) and saved with ``method.save``:
  ``{"format": "bench.aprilgan.adapters", "version": 1, "layers", "dim_in", "dim_out",
  "state_dict" (our key names), "meta" (backbone and training provenance)}``;
- ``"untrained"``: freshly initialised linear layers (``nn.Linear`` default init, seeded by
  ``init_seed``). The maps are **meaningless**: for tests and for smoke runs with
  ``--weights random``, never for a result.

Training (``bench.methods.aprilgan.train.train``, following the official ``train.py``): frozen backbone,
the adapters alone are trained on the auxiliary dataset's **test** images and masks (all its
categories, shuffled together); per layer the logits are upsampled to the input size (bilinear,
``align_corners=True``), soft-maxed, and the loss is focal(probabilities, mask) +
dice(abnormal probability, mask), summed over layers [``loss.py``: focal with gamma 2, no alpha,
smooth 1e-5 on the one-hot target and on p_t; dice with smooth 1, averaged over images]; masks
are resized bilinearly to the input size and thresholded at 0.5. Adam, lr 1e-3,
betas (0.5, 0.999), batch 8 [train.sh], seed 111; 15 epochs on VisA (for MVTec AD), 3 on MVTec AD (for
VisA) with a 2×2 mosaic of random test images of the same category replacing a sample with
probability 0.2 [``aug_rate`` / ``combine_img``] [``train.sh``].

    from bench.methods.aprilgan.train import train
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("aprilgan", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"),
                                device="cuda")
    train(method, backbone, "/data/visa", save="aprilgan_visa.pt")  # 15 epochs
    # then: bench run --methods aprilgan --data-root /data/mvtec \\
    #           --set method_options.aprilgan.checkpoint=aprilgan_visa.pt

Layout: ``model.py`` (prompts, adapters against text, image score), ``checkpoint.py`` (official and
bench files), ``train.py`` (``train``); the method below (``bench.methods._learned.LearnedMethod``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.errors import ConfigError
from bench.interfaces import Backbone
from bench.methods._clip.adapters import Adapters, depth_order
from bench.methods._clip.prompts import ABNORMAL_STATES, NORMAL_STATES, ObjectPrompts, require_clip
from bench.methods._learned import LearnedMethod
from bench.methods.aprilgan.checkpoint import FORMAT, load_adapters
from bench.methods.aprilgan.model import (
    LOGIT_SCALE,
    TEMPLATES,
    abnormal_probability,
    anomaly_maps,
    class_text_embeddings,
)
from bench.methods.aprilgan.train import TRAINING
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = (
    "A Zero-/Few-Shot Anomaly Classification and Segmentation Method for CVPR 2023 VAND Workshop "
    "Challenge (APRIL-GAN; Chen et al., 2023)"
)
ARXIV = "2305.17382"

OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_LAYERS = ("block6", "block12", "block18", "block24")  # --features_list 6 12 18 24
# At 518 px the official factory builds the model from its config, CLIP(**model_cfg), which has no
# quick_gelu, and loads OpenAI's weights into it: exact GELU, on which the released adapters were trained.
BACKBONE_OPTIONS: dict[str, dict[str, object]] = {
    OFFICIAL_BACKBONE: {"layers": OFFICIAL_LAYERS, "input_size": 518, "quick_gelu": False},
}
SCORE_CHUNK = 32  # images per adapter pass in score() (bounds the (B, P, D) intermediates)

# Measured by tests/parity (the README parity table shows the same line).
PARITY = "compared with ByChelsea/VAND-APRIL-GAN@f13b8a63; max |Δ| maps 9.9e-6; image scores 2.8e-6"
DEVIATIONS = (
    "Maps: 'none' is scored on the official map (the two logits upsampled to the input size, bilinear, "
    "align_corners=True, then the softmax; the protocol's per-category min-max rescale on top, monotone). "
    "The refiners consume another map, the softmax taken on the patch grid (the trainable refiners size "
    "their networks by the coarse map; an input-size coarse map makes ARD run out of memory); upsampled, "
    "it is not the official map (on the parity recipe max |diff| 0.37: the softmax does not commute with "
    "the upsampling). "
    "Activation: exact GELU on ViT-L-14-336 at 518 px, as the official build (CLIP(**model_cfg), "
    "no quick_gelu, OpenAI's weights loaded into it). "
    "Precision: the adapters and the map arithmetic run in float32 (official: under CUDA fp16 "
    "autocast; the backbone still runs under fp16 autocast on CUDA as the official code). "
    "Object name in the prompts: the category name as is (as official; PGT's synthetic images "
    "carry the category of their group), or the object_name option when set. "
    "Adapters: no silent default; 'untrained' (fresh nn.Linear init) exists only for tests and "
    "smoke runs. Training (train) follows train.py (focal + dice summed over layers, "
    "Adam lr 1e-3 betas (0.5, 0.999), batch 8 (train.sh), seed 111, 15 epochs on VisA / 3 on MVTec AD with "
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
    "bench.methods.aprilgan.train.train(method, backbone, dataset, save=PATH)."
)


@METHODS.register(
    "aprilgan",
    "APRIL-GAN (VAND 2023): CLIP prompt ensemble vs linearly adapted patch tokens; needs adapters "
    "trained on an auxiliary dataset (--set method_options.aprilgan.checkpoint=PATH)",
)
class APRILGAN(LearnedMethod):
    """APRIL-GAN zero-shot: adapted patch tokens against a prompt ensemble (see the module docstring).

    checkpoint: the adapters: the official checkpoint (visa_pretrained.pth / mvtec_pretrained.pth), a file
    saved by ``train`` / ``method.save``, or ``"untrained"`` (meaningless maps: tests and smoke runs only).
    Required.
    object_name: the object name put in the prompts for every image (default: each batch's
    category name, as the official code uses its class names).
    init_seed: seed of the ``"untrained"`` initialisation.
    """

    name = "aprilgan"
    checkpoint_help = ADAPTERS_HELP
    checkpoint_format = FORMAT

    def __init__(self, checkpoint: str | Path | None = None, object_name: str | None = None,
                 init_seed: int = 0) -> None:
        self.prompts: ObjectPrompts[torch.Tensor] = ObjectPrompts("aprilgan", object_name)  # text embeddings
        super().__init__(
            checkpoint, init_seed,
            settings={
                "prompts": f"{len(NORMAL_STATES)} normal + {len(ABNORMAL_STATES)} abnormal states x "
                           f"{len(TEMPLATES)} templates; per class mean of normalised embeddings, normalised",
                "object_name": self.prompts.object_name or "category name",
                "logit_scale": LOGIT_SCALE,
                "layers": "ViT-L-14-336: blocks 6/12/18/24 at 518 px (others: the backbone's default)",
                "adapter": "nn.Linear(width, embed_dim) per layer, tokens before ln_post, class token dropped",
                "map": "sum over layers of softmax(100 cos(adapter(token), text))[abnormal], softmax on the "
                       "patch grid (what refiners consume)",
                "evaluated_map": "official: the logits upsampled to the input size (bilinear, align_corners=True), "
                                 "then the softmax; no smoothing ('none' is scored on it)",
                "image_score": "softmax(100 cos(image embedding, text))[abnormal] (zero-shot)",
                "training": TRAINING,
                "parity": PARITY,
            },
            paper=PAPER, arxiv=ARXIV, default_backbone=OFFICIAL_BACKBONE, deviations=DEVIATIONS,
            backbone_options=BACKBONE_OPTIONS,
        )

    # -- binding
    def build(self, backbone: Backbone) -> Adapters:
        """Check the backbone is CLIP; fresh adapters from its tapped layers to its embedding."""
        require_clip(backbone, "aprilgan", OFFICIAL_BACKBONE)
        channels = dict(backbone.channels)
        if not channels:
            raise ConfigError(f"aprilgan: backbone {backbone.name!r} declares no layers")
        dim_out = getattr(backbone, "embedding_dim", None)
        if dim_out is None:
            dim_out = int(backbone.encode_text(["a photo of an object."]).shape[-1])
        self.layers = depth_order(list(channels))
        return Adapters(self.layers, channels, int(dim_out))

    def load(self, path: Path, module: Adapters) -> dict[str, object]:
        return load_adapters(path, module)

    def on_bind(self, backbone: Backbone) -> None:
        self.prompts.cache.clear()

    def bound_settings(self, source: dict[str, object]) -> dict[str, object]:
        adapters = self.require_bound()
        dims = ", ".join(str(adapters.dim_in[n]) for n in self.layers)
        settings: dict[str, object] = {"adapter_dims": f"{dims} -> {adapters.dim_out}"}
        if source["kind"] == "official":
            settings["official_key_mapping"] = source["mapping"]
        return settings

    def checkpoint_fields(self) -> dict[str, object]:
        adapters = self.require_bound()
        return {"dim_in": dict(adapters.dim_in), "dim_out": adapters.dim_out}

    # -- text
    def text(self, name: str) -> torch.Tensor:
        """``(D, 2)`` normal/abnormal text embeddings of object ``name`` (computed once, cached)."""
        self.require_bound()
        return self.prompts.get(name, lambda n: class_text_embeddings(self.backbone.encode_text, n).to(self.device))

    # -- scoring
    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and zero-shot image scores of each image (``reference`` is ignored: per-image method)."""
        adapters = self.require_bound()
        missing = [name for name in adapters.layers if name not in features.layers]
        if missing:
            raise ConfigError(
                f"aprilgan: the features lack layer(s) {', '.join(missing)} its adapters were built for "
                f"(features have {', '.join(features.layers) or 'none'})"
            )
        text = self.text(self.prompts.object_for(features.category))
        size = int(self.backbone.input_size)
        maps, evaluated, scores = [], [], []
        with torch.no_grad():
            for start in range(0, len(features), SCORE_CHUNK):
                rows = slice(start, start + SCORE_CHUNK)
                layers = {name: features.layers[name][rows].to(self.device, torch.float32) for name in adapters.layers}
                maps.append(anomaly_maps(layers, adapters, text).float().cpu())
                evaluated.append(anomaly_maps(layers, adapters, text, size).float().cpu())
                scores.append(abnormal_probability(features.embedding[rows].to(self.device), text).float().cpu())
        if not maps:
            h, w = features.layers[adapters.layers[0]].shape[-2:]
            return ScoreOutput(torch.zeros(0), torch.zeros(0, h, w), torch.zeros(0, size, size))
        return ScoreOutput(image_scores=torch.cat(scores), maps=torch.cat(maps), evaluated=torch.cat(evaluated))
