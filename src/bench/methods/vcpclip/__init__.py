"""VCP-CLIP: zero-shot anomaly segmentation with visual context prompting of CLIP.

Qu et al., "VCP-CLIP: A visual context prompting model for zero-shot anomaly segmentation",
ECCV 2024, arXiv 2407.12276; official code xiaozhen228/VCP-CLIP (read for the formulas and
settings: ``models/model_CLIP.py``, ``models/transformer.py``, ``models/pre_vcp.py``,
``models/post_vcp.py``, ``models/prompt_ensemble.py``, ``train.py``, ``test.py``, ``utils/loss.py``,
``utils/dataset.py``, ``train.sh``, ``test.sh``; this is our own code). Per-image; the prompts
are learned once on an *auxiliary* dataset (train on VisA, test on MVTec AD, and the reverse).
The object's name is never used: the category comes from the image.

Pipeline (official code in brackets), ViT-L-14-336 at 518 px, blocks 6/12/18/24 (37×37 grid):

1. Pre-VCP [``Context_Prompting``]: the *unnormalised* CLIP image embedding e (``ln_post`` of
   the class token ``@ proj``; layer ``vcp_embedding`` of the backbone extra ``embedding.VcpEmbedding``)
   becomes r = 2 category tokens ``c = q + Conv1d(1→r, kernel 3, padding same)(e)``, q a learned
   ``(r, W)`` query [``prompt_query``, ``prompt_linear1``] (W = text width = embedding dim).
2. Unified text prompts [``Prompt_Ensemble``, ``CLIP.encode_text``]: "a photo of a good
   <|class|>" and "a photo of a damaged <|class|>", the ``<|class|>`` token replaced by the r
   category tokens of the image (the sequence stays 77 long). Deep text prompts [VPT-style,
   ``forward_deep_prompt``]: one learned token, ``Dropout(0.1)(Linear(p))``, goes in after the
   start token before the first block and is replaced before each later block by that block's
   own learned token (11 of them for a 12-block text tower); after the last block it is removed,
   a learned ``LayerNorm(eps 1e-6)`` [``prompt_norm``] then CLIP's ``ln_final`` are applied and
   the end token's output ``@ text_projection``, L2-normalised, gives ``T`` ``(2, D)`` per image
   (row 0 normal, row 1 abnormal).
3. Pre-VCP map [``anomaly_map_raw``], per layer l: the block's patch tokens (before ``ln_post``,
   class token dropped) through a linear layer ``width → D`` [``LinearLayer``, APRIL-GAN's],
   L2-normalised, logits ``exp(τ1) · z Tᵀ`` (τ1 learned, initially log(1/0.07)) [``prompt_temp``].
4. Post-VCP map [``Zero_Parameter``, ``anomaly_map_new``], per layer: the text attends to the
   image's L2-normalised patch tokens x: 8-head attention with 1×1-conv (linear) projections,
   query from T (D → width), key and value from x (width → width), softmax over the patches
   **without** the 1/√d scaling (``beta_t = 1``), output projection (width → width), then
   L2-normalised: ``T'`` ``(2, width)``; logits ``exp(τ2) · x T'ᵀ`` (τ2 learned)
   [``prompt_temp_l1``]. One module shared by all layers.
5. Maps: per branch, the mean over layers of the abnormal softmax probability; the map is
   ``0.2 · pre + 0.8 · post`` [``alpha = 0.2`` in ``calcuate_metric``], softmax on the patch grid:
   what refiners consume. The official code evaluates another map [``test.py``]: the logits upsampled
   to the input size (bilinear, ``align_corners=True``) before the softmax, the fused map smoothed
   with a Gaussian of σ = 8 px and min-max normalised per category. ``score`` returns it up to the
   normalisation as ``evaluated``; the protocol's per-category min-max rescale is that normalisation.
6. Image score [``calcuate_metric``]: at the input size, the mean of the 2000 largest pixels of the
   pre map plus the same of the post map (all pixels if there are fewer).

Learned parameters, option ``checkpoint`` (no silent fallback: without it the method refuses to
run, unless the backbone has random weights, where they are untrained too):

- the **official released checkpoint** (``train_visa.pth``, trained on VisA, for testing on
  MVTec AD; ``train_mvtec.pth``, trained on MVTec AD, for VisA; ViT-L-14-336 ``openai`` at 518 px,
  blocks 6/12/18/24 only). ``train.py`` saves ``{"trainable_linearlayer": LinearLayer.state_dict(),
  "New_Lan_Embed": Context_Prompting.state_dict(), "Zero_try": Zero_Parameter.state_dict()}``
  plus, at the top level, the CLIP parameters whose name holds "prompt". Key mapping:

  ====================================================  =========================================
  official                                              ours
  ====================================================  =========================================
  ``trainable_linearlayer`` ``fc.<i>.weight|bias``      ``adapters.linears.<layer_i>.*`` (i-th
                                                        tapped layer in increasing depth)
  ``New_Lan_Embed`` ``prompt_query`` (1, r, W)          ``pre.query``
  ``New_Lan_Embed`` ``prompt_linear1.fc.weight|bias``   ``pre.conv.weight|bias`` (r, 1, 3), (r,)
  ``New_Lan_Embed`` ``prompt_temp`` ()                  ``pre.log_scale``
  ``Zero_try`` ``q_proj_pre`` / ``k_proj_pre_1`` /      ``post.q`` / ``post.k`` / ``post.v`` /
  ``v_proj_pre_1`` / ``proj_post_t`` ``.weight|bias``   ``post.out`` (Conv1d (out, in, 1) weights
                                                        squeezed to Linear (out, in))
  ``Zero_try`` ``prompt_temp_l1`` ()                    ``post.log_scale``
  ``prompt_embeddings`` (1, 1, W)                       ``prompts.shallow``
  ``deep_prompt_embeddings`` (depth - 1, 1, W)          ``prompts.deep``
  ``prompt_proj.weight|bias``                           ``prompts.proj.weight|bias``
  ``prompt_norm.weight|bias``                           ``prompts.norm.weight|bias``
  ``prompt_text_projection``                            ignored (unused by the official forward)
  ====================================================  =========================================

- a file saved by ``train`` (``train.py``) / ``method.save``: ``{"format": "bench.vcpclip", "version": 1,
  "layers", "state_dict" (our key names), "meta" (backbone and training provenance)}``;
- ``"untrained"``: fresh parameters (the official initialisation, seeded by ``init_seed``);
  **meaningless** maps, for tests and smoke runs only.

CLIP itself [``models/transformer.py``]: the official model code builds CLIP's blocks with exact
GELU (``nn.GELU``; QuickGELU is commented out) although OpenAI's weights were trained with
QuickGELU, and its released checkpoints were trained that way. The method therefore asks the
backbone for ``quick_gelu=False`` (option ``quick_gelu``).

Training (``bench.methods.vcpclip.train.train``, following ``train.py`` / ``train.sh``): frozen CLIP; on the auxiliary
dataset's **test** images and masks, all categories shuffled together; per layer and branch the
logits are upsampled to the input size (bilinear, ``align_corners=True``) and soft-maxed; loss =
Σ_layers focal + dice of the post branch + the same of the pre branch (``utils/loss.py``: the
APRIL-GAN losses). Adam, betas (0.5, 0.999), lr 4e-5 on VisA / 2e-5 on MVTec AD, the two
temperatures at lr 0.01; batch 32, 10 epochs, seed 333; prompt dropout active. Augmentation
[``utils/dataset.py``, albumentations 1.4 defaults], each with probability 0.5: rotation within
±30° (bilinear, mirrored border; mask nearest), a random multiple of 90°, brightness/contrast
±0.2, Gaussian noise of variance U(10, 50), and one of a 3×3 box blur, a colour jitter
(brightness, contrast, saturation ±0.2, hue ±0.2) and a Gaussian blur of kernel 3/5/7; on MVTec
AD a sample is replaced by a 2×2 mosaic of four random anomalous images of its category with
probability 0.2.

    from bench.methods.vcpclip.train import train
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("vcpclip", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"),
                                device="cuda")
    train(method, backbone, "/data/visa", save="vcp_visa.pt")  # 10 epochs, lr 4e-5
    # then: bench run --methods vcpclip --data-root /data/mvtec \\
    #           --set method_options.vcpclip.checkpoint=vcp_visa.pt

Layout: ``model.py`` (the learned modules and formulas), ``embedding.py`` (the backbone extra),
``checkpoint.py`` (official and bench files), ``train.py`` (``train``, augmentations); the method below.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.backbones.openclip import ARCHS
from bench.errors import ConfigError
from bench.interfaces import Backbone
from bench.methods._clip.adapters import depth_order
from bench.methods._clip.prompts import require_clip
from bench.methods._learned import LearnedMethod
from bench.methods.vcpclip.checkpoint import FORMAT, load_vcp
from bench.methods.vcpclip.embedding import LAYER as EMBEDDING_LAYER
from bench.methods.vcpclip.embedding import VcpEmbedding
from bench.methods.vcpclip.model import (
    ALPHA,
    N_CONTEXT,
    N_PROMPT,
    POST_HEADS,
    PROMPT_DROPOUT,
    PROMPTS,
    TOP_K,
    VCPParameters,
    branch_maps,
    fuse,
    layer_logits,
    prompted_text,
    top_mean,
)
from bench.methods.vcpclip.train import TRAINING
from bench.ops import gaussian_smooth
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = "VCP-CLIP: A visual context prompting model for zero-shot anomaly segmentation (Qu et al., ECCV 2024)"
ARXIV = "2407.12276"

OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_LAYERS = ("block6", "block12", "block18", "block24")  # --features_list 6 12 18 24
OFFICIAL_SIZE = 518
SCORE_CHUNK = 16  # images per pass in score() (bounds the input-size probability maps)
SIGMA = 8.0  # test.py: gaussian_filter(sigma=8, axes=(1, 2)) of the fused map at the input size

CHECKPOINT_HELP = (
    "Two ways: (1) the official released checkpoint of xiaozhen228/VCP-CLIP (train_visa.pth, trained "
    "on VisA, to test on MVTec AD; train_mvtec.pth, trained on MVTec AD, to test on VisA; for "
    "ViT-L-14-336 with openai weights at 518 px, blocks 6/12/18/24), or (2) parameters trained on the "
    "auxiliary dataset (VisA for MVTec AD and the reverse) with "
    "bench.methods.vcpclip.train.train(method, backbone, dataset, save=PATH)."
)

DEVIATIONS = (
    "Maps: 'none' is scored on the official map (logits upsampled to the input size, bilinear, "
    "align_corners=True, then the softmax; the fused map smoothed with a Gaussian of sigma 8 px; "
    "min-max normalised per category, which is the protocol's rescale); the refiners consume the map "
    "with the softmax on the patch grid, unsmoothed. The image score is computed the official way, at "
    "the input size, but not min-max normalised per category (monotone within a category: no effect "
    "on per-category metrics). Pre-VCP's unnormalised image embedding comes from a second pass "
    "of the image tower (backbone extra 'vcp_embedding': same value, twice the feature time). "
    "Precision: the learned parts, the prompted text tower and the map arithmetic run in float32 "
    "(official: CUDA fp16 autocast; the backbone's image pass still uses fp16 autocast on CUDA). "
    "Checkpoints: the official code loads the linear layers and Post-VCP with strict=False; we "
    "load every part strictly and ignore prompt_text_projection (unused by the official forward). "
    "Backbones other than ViT-L-14-336 use their default 4 layers (the official 6/12/18/24 do "
    "not exist on 12-block towers). Training (train): shuffles with numpy (not torch's "
    "DataLoader); the augmentations are our re-implementation of albumentations' defaults (scipy, "
    "torchvision) applied after resizing to the input size (official: to the original image "
    "before resizing, so noise and blur are relatively weaker there); mosaic tiles of unequal "
    "size are resized to the first tile's size; no per-epoch validation on the other dataset "
    "(official: logged only) and the last epoch is kept."
)



@METHODS.register(
    "vcpclip",
    "VCP-CLIP (ECCV 2024): CLIP text prompts with visual context (Pre-/Post-VCP); needs prompts trained "
    "on an auxiliary dataset (set its checkpoint option)",
)
class VCPCLIP(LearnedMethod):
    """VCP-CLIP zero-shot (see the module docstring).

    checkpoint: the official checkpoint (train_visa.pth / train_mvtec.pth), a file saved by ``train`` /
    ``method.save``, or ``"untrained"`` (meaningless maps: tests and smoke runs only). Required.
    quick_gelu: the CLIP activation asked of the backbone (official: False, exact GELU).
    init_seed: seed of the ``"untrained"`` initialisation.
    """

    name = "vcpclip"
    checkpoint_help = CHECKPOINT_HELP
    checkpoint_format = FORMAT

    def __init__(self, checkpoint: str | Path | None = None, quick_gelu: bool = False, init_seed: int = 0) -> None:
        self.quick_gelu = bool(quick_gelu)
        self._tokens: torch.Tensor | None = None
        super().__init__(
            checkpoint, init_seed,
            settings={
                "prompts": f"{PROMPTS[0]!r} / {PROMPTS[1]!r} + {N_CONTEXT} Pre-VCP category tokens; "
                           f"{N_PROMPT} deep text prompt token per text block (dropout {PROMPT_DROPOUT} in training)",
                "layers": "ViT-L-14-336: blocks 6/12/18/24 at 518 px (others: the backbone's default)",
                "quick_gelu": self.quick_gelu,
                "pre_vcp": "query + Conv1d(1->2, k3)(unnormalised image embedding)",
                "post_vcp": f"{POST_HEADS}-head text->patch attention, no 1/sqrt(d) scaling, normalised",
                "map": f"{ALPHA} * pre + {1 - ALPHA} * post; each the mean over layers of "
                       "softmax(exp(tau) cos)[abnormal], softmax on the patch grid (what refiners consume)",
                "evaluated_map": f"official: logits upsampled to the input size (bilinear, align_corners=True) "
                                 f"before the softmax, the fused map smoothed by a Gaussian of sigma {SIGMA} px, "
                                 f"min-max normalised per category by the protocol ('none' is scored on it)",
                "image_score": f"mean of the top {TOP_K} input-size pixels of the pre map + the same of the post map",
                "training": TRAINING,
                "parity": "compared with xiaozhen228/VCP-CLIP@4dd96ec6; max |Δ| maps 1.8e-7; image scores 5.6e-6",
            },
            paper=PAPER, arxiv=ARXIV, default_backbone=OFFICIAL_BACKBONE, deviations=DEVIATIONS,
        )

    def backbone_options(self, backbone: str) -> dict[str, object]:
        """Every open_clip ViT: the unnormalised embedding extra and exact GELU; the official layers and size on ViT-L-14-336."""
        if backbone not in ARCHS:
            return {}
        options: dict[str, object] = {"quick_gelu": self.quick_gelu, "extras": {VcpEmbedding: {}}}
        if backbone == OFFICIAL_BACKBONE:
            options.update(layers=OFFICIAL_LAYERS, input_size=OFFICIAL_SIZE)
        return options

    # -- binding
    def build(self, backbone: Backbone) -> VCPParameters:
        """Check the backbone (open_clip with the embedding extra); fresh parameters for its layers."""
        require_clip(backbone, "vcpclip", OFFICIAL_BACKBONE, tower=True)
        model = backbone.model
        if EMBEDDING_LAYER not in backbone.extra_channels:
            raise ConfigError(
                f"vcpclip needs the backbone extra {EMBEDDING_LAYER!r} (the unnormalised image embedding): "
                f"create the backbone with method.backbone_options({backbone.name!r})"
            )
        dim = int(backbone.extra_channels[EMBEDDING_LAYER])
        text_width = int(model.token_embedding.weight.shape[1])
        if text_width != dim:
            raise ConfigError(
                f"vcpclip needs a text width equal to the embedding dim (official assertion); "
                f"{backbone.name} has {text_width} and {dim}"
            )
        channels = dict(backbone.channels)
        widths = set(channels.values())
        if len(widths) != 1:
            raise ConfigError(f"vcpclip: layers of one width expected, {backbone.name} has {channels}")
        self.layers = depth_order(list(channels))
        return VCPParameters(self.layers, widths.pop(), dim, len(model.transformer.resblocks))

    def load(self, path: Path, module: VCPParameters) -> dict[str, object]:
        return load_vcp(path, module)

    def on_bind(self, backbone: Backbone) -> None:
        self.provenance["quick_gelu"] = getattr(backbone, "quick_gelu", None)
        self._tokens = backbone.tokenizer(list(PROMPTS)).to(self.device)

    def bound_settings(self, source: dict[str, object]) -> dict[str, object]:
        return {"quick_gelu": getattr(self.backbone, "quick_gelu", None)}

    def text(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, 2, D)`` normal/abnormal text embeddings of images with unnormalised embeddings ``(B, D)``."""
        params = self.require_bound()
        return prompted_text(self.backbone.model, self._tokens, params.pre(embedding), params.prompts)

    def logits(self, features: FeatureSet) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per learned layer, the ``(B, 2, h, w)`` pre and post logits of a batch (with autograd)."""
        params = self.require_bound()
        missing = [name for name in (*params.layers, EMBEDDING_LAYER) if name not in features.layers]
        if missing:
            raise ConfigError(
                f"vcpclip: the features lack layer(s) {', '.join(missing)} (features have "
                f"{', '.join(features.layers) or 'none'}); score features of the backbone it was bound to"
            )
        text = self.text(features.layers[EMBEDDING_LAYER].to(self.device, torch.float32).flatten(1))
        return [layer_logits(params, name, features.layers[name].to(self.device, torch.float32), text)
                for name in params.layers]

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and image scores of each image (``reference`` is ignored: per-image method)."""
        params = self.require_bound()
        size = int(self.backbone.input_size)
        maps, evaluated, scores = [], [], []
        with torch.no_grad():
            for start in range(0, len(features), SCORE_CHUNK):
                logits = self.logits(features.select(slice(start, start + SCORE_CHUNK)))
                pre, post = branch_maps(logits, size)
                scores.append((top_mean(pre, TOP_K) + top_mean(post, TOP_K)).cpu())
                evaluated.append(gaussian_smooth(fuse(pre, post).cpu(), SIGMA))
                maps.append(fuse(*branch_maps(logits)).cpu())
        if not maps:
            h, w = features.layers[params.layers[0]].shape[-2:]
            return ScoreOutput(torch.zeros(0), torch.zeros(0, h, w), torch.zeros(0, size, size))
        return ScoreOutput(image_scores=torch.cat(scores), maps=torch.cat(maps), evaluated=torch.cat(evaluated))
