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
   the class token ``@ proj``; layer ``vcp_embedding`` of the backbone extra of that name)
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
   ``0.2 · pre + 0.8 · post`` [``alpha = 0.2`` in ``calcuate_metric``]. The official code upsamples
   the logits to the input size (bilinear, ``align_corners=True``) before the softmax:
   ``resolution="input"`` does that, ``"grid"`` (default) softmaxes on the patch grid and leaves
   the upsampling to the protocol, as every coarse map in bench.
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

- a file saved by ``train_vcp`` / ``save_vcp``: ``{"format": "bench.vcpclip", "version": 1,
  "layers", "state_dict" (our key names), "meta" (backbone and training provenance)}``;
- ``"untrained"``: fresh parameters (the official initialisation, seeded by ``init_seed``);
  **meaningless** maps, for tests and smoke runs only.

CLIP itself [``models/transformer.py``]: the official model code builds CLIP's blocks with exact
GELU (``nn.GELU``; QuickGELU is commented out) although OpenAI's weights were trained with
QuickGELU, and its released checkpoints were trained that way. The method therefore asks the
backbone for ``quick_gelu=False`` (option ``quick_gelu``).

Training (``train_vcp``, following ``train.py`` / ``train.sh``): frozen CLIP; on the auxiliary
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

    from bench.methods.vcpclip import train_vcp
    from bench.registry import BACKBONES, METHODS
    method = METHODS.create("vcpclip", checkpoint="untrained")
    backbone = BACKBONES.create("ViT-L-14-336", **method.backbone_options("ViT-L-14-336"),
                                device="cuda")
    train_vcp(method, backbone, "/data/visa", save="vcp_visa.pt")  # 10 epochs, lr 4e-5
    # then: bench run --methods vcpclip --data-root /data/mvtec \\
    #           --set method_options.vcpclip.checkpoint=vcp_visa.pt
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn

from bench.backbones.clip_extras.vcp_embedding import LAYER as EMBEDDING_LAYER
from bench.backbones.openclip import ARCHS
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone, Dataset, Method, MethodInfo
from bench.methods._auxiliary import (
    UNTRAINED, AuxiliaryBatch, AuxiliaryData, check_training, dice_loss, fit_on_auxiliary, focal_loss,
    is_bench_checkpoint, learned_source, load_checkpoint, official_setting, save_learned, training_meta,
)
from bench.methods._prompts import require_clip
from bench.methods.aprilgan import Adapters, depth_order
from bench.methods.aprilgan import official_to_bench as linear_layers_to_bench
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = "VCP-CLIP: A visual context prompting model for zero-shot anomaly segmentation (Qu et al., ECCV 2024)"
ARXIV = "2407.12276"

# --------------------------------------------------------------------------- official settings

# prompt_ensemble.py: "a photo of a good <|class|>" / "a photo of a damaged <|class|>"; the
# <|class|> token ends each prompt, so the category tokens go where the prefix's end token is.
PROMPTS: tuple[str, str] = ("a photo of a good", "a photo of a damaged")
N_CONTEXT = 2  # --prompt_len: r, the Pre-VCP category tokens
N_PROMPT = 1  # --deep_prompt_len: learned text tokens per block
PROMPT_DROPOUT = 0.1
INIT_LOG_SCALE = math.log(1 / 0.07)  # prompt_temp, prompt_temp_l1
POST_HEADS = 8  # Zero_Parameter num_heads
ALPHA = 0.2  # map = ALPHA · pre + (1 - ALPHA) · post
TOP_K = 2000  # image score: mean of the top-k pixels of each branch at the input size

OFFICIAL_BACKBONE = "ViT-L-14-336"
OFFICIAL_LAYERS = ("block6", "block12", "block18", "block24")  # --features_list 6 12 18 24
OFFICIAL_SIZE = 518

TRAIN_LR = {"visa": 4e-5, "mvtec": 2e-5}  # train.sh, per auxiliary dataset
TEMPERATURE_LR = 0.01  # prompt_temp, prompt_temp_l1
TRAIN_BETAS = (0.5, 0.999)
TRAIN_BATCH_SIZE = 32
TRAIN_EPOCHS = 10
TRAIN_SEED = 333
OFFICIAL_MOSAIC_RATE = {"mvtec": 0.2}  # aug_rate: only MVTecDataset makes mosaics

FORMAT = "bench.vcpclip"
FORMAT_VERSION = 1
OFFICIAL_PARTS = ("trainable_linearlayer", "New_Lan_Embed", "Zero_try")
RESOLUTIONS = ("grid", "input")
SCORE_CHUNK = 16  # images per pass in score() (bounds the input-size probability maps)

CHECKPOINT_HELP = (
    "Two ways: (1) the official released checkpoint of xiaozhen228/VCP-CLIP (train_visa.pth, trained "
    "on VisA, to test on MVTec AD; train_mvtec.pth, trained on MVTec AD, to test on VisA; for "
    "ViT-L-14-336 with openai weights at 518 px, blocks 6/12/18/24), or (2) parameters trained on the "
    "auxiliary dataset (VisA for MVTec AD and the reverse) with "
    "bench.methods.vcpclip.train_vcp(method, backbone, dataset, save=PATH)."
)

DEVIATIONS = (
    "Map resolution: by default (resolution='grid') the softmax is taken on the patch grid and the "
    "map returned at grid resolution for the protocol to upsample; the official code upsamples the "
    "logits to the input size (bilinear, align_corners=True) first, which resolution='input' "
    "reproduces. The image score is always computed the official way, at the input size. "
    "Post-processing left out of the method: the official Gaussian smoothing of the map (sigma 8 "
    "px at 518) is the 'gaussian' refiner (sigma=8), and the per-category min-max normalisation "
    "of maps and scores is monotone within a category (no effect on per-category metrics) and "
    "needs the whole category. Pre-VCP's unnormalised image embedding comes from a second pass "
    "of the image tower (backbone extra 'vcp_embedding': same value, twice the feature time). "
    "Precision: the learned parts, the prompted text tower and the map arithmetic run in float32 "
    "(official: CUDA fp16 autocast; the backbone's image pass still uses fp16 autocast on CUDA). "
    "Checkpoints: the official code loads the linear layers and Post-VCP with strict=False; we "
    "load every part strictly and ignore prompt_text_projection (unused by the official forward). "
    "Backbones other than ViT-L-14-336 use their default 4 layers (the official 6/12/18/24 do "
    "not exist on 12-block towers). Training (train_vcp): shuffles with numpy (not torch's "
    "DataLoader); the augmentations are our re-implementation of albumentations' defaults (scipy, "
    "torchvision) applied after resizing to the input size (official: to the original image "
    "before resizing, so noise and blur are relatively weaker there); mosaic tiles of unequal "
    "size are resized to the first tile's size; no per-epoch validation on the other dataset "
    "(official: logged only) and the last epoch is kept."
)


# --------------------------------------------------------------------------- learned modules


class PreVCP(nn.Module):
    """Global visual context → r category tokens: ``q + Conv1d(1 → r, 3, padding same)(e)``."""

    def __init__(self, dim: int, n_context: int = N_CONTEXT) -> None:
        super().__init__()
        self.query = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, n_context, dim)))
        self.conv = nn.Conv1d(1, n_context, 3, padding="same")
        self.log_scale = nn.Parameter(torch.tensor(INIT_LOG_SCALE))  # τ1 of the pre map

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` unnormalised image embeddings → ``(B, r, D)`` category tokens."""
        return self.query + self.conv(embedding[:, None])


class DeepPrompts(nn.Module):
    """Learned text tokens after the start token, one set per block of the text tower (VPT-deep)."""

    def __init__(self, width: int, depth: int, n_tokens: int = N_PROMPT) -> None:
        super().__init__()
        self.shallow = nn.Parameter(nn.init.uniform_(torch.empty(1, n_tokens, width), -1, 1))
        self.deep = nn.Parameter(nn.init.uniform_(torch.empty(depth - 1, n_tokens, width), -1, 1))
        self.proj = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.dropout = nn.Dropout(PROMPT_DROPOUT)

    def _tokens(self, prompt: torch.Tensor, batch: int) -> torch.Tensor:
        return self.dropout(self.proj(prompt).expand(batch, -1, -1))  # a dropout mask per sequence

    def forward(self, x: torch.Tensor, transformer: nn.Module, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``(N, L, W)`` embedded sequences through ``transformer``'s blocks → ``(N, L - n, W)``.

        The prompt tokens take the places after the start token (the sequence's last n tokens,
        padding, are dropped to keep its length), are replaced before every block but the first,
        and are removed at the end; then the learned LayerNorm.
        """
        n = self.shallow.shape[1]
        seq_first = not getattr(transformer, "batch_first", False)
        x = torch.cat([x[:, :1], self._tokens(self.shallow[0], len(x)), x[:, 1:-n]], dim=1)
        for i, block in enumerate(transformer.resblocks):
            if i > 0:
                x = torch.cat([x[:, :1], self._tokens(self.deep[i - 1], len(x)), x[:, 1 + n:]], dim=1)
            if seq_first:
                x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
            else:
                x = block(x, attn_mask=attn_mask)
        return self.norm(torch.cat([x[:, :1], x[:, 1 + n:]], dim=1))


class PostVCP(nn.Module):
    """Text embeddings attend to the patch tokens: ``(B, S, D)``, ``(B, P, C)`` → ``(B, S, C)``."""

    def __init__(self, text_dim: int, width: int, heads: int = POST_HEADS) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"vcpclip Post-VCP: image width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(text_dim, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.log_scale = nn.Parameter(torch.tensor(INIT_LOG_SCALE))  # τ2 of the post map

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Multi-head attention without 1/√d scaling, output L2-normalised (official ``Zero_Parameter``)."""
        b, s, _ = text.shape
        q = self.q(text).view(b, s, self.heads, -1)
        k = self.k(patches).view(b, patches.shape[1], self.heads, -1)
        v = self.v(patches).view(b, patches.shape[1], self.heads, -1)
        attn = torch.einsum("bshc,bphc->bhsp", q, k).softmax(dim=-1)
        out = torch.einsum("bhsp,bphc->bshc", attn, v).reshape(b, s, -1)
        return F.normalize(self.out(out), dim=-1)


class VCPParameters(nn.Module):
    """Everything VCP-CLIP learns; CLIP stays frozen."""

    def __init__(self, layers: Sequence[str], width: int, dim: int, text_depth: int) -> None:
        super().__init__()
        self.adapters = Adapters(layers, {name: width for name in layers}, dim)
        self.pre = PreVCP(dim)
        self.prompts = DeepPrompts(dim, text_depth)
        self.post = PostVCP(dim, width)

    @property
    def layers(self) -> tuple[str, ...]:
        return self.adapters.layers


# --------------------------------------------------------------------------- the formulas


def prompted_text(model: nn.Module, tokens: torch.Tensor, context: torch.Tensor, prompts: DeepPrompts) -> torch.Tensor:
    """``(B, S, D)`` L2-normalised embeddings of S prompts per image, each completed by its image's tokens.

    tokens: ``(S, L)`` token ids of the prompt prefixes (start, words, end, padding); the image's
    r context tokens ``(B, r, W)`` go in at the end token's place, which moves r places on; the
    last r (padding) places are dropped. ``model``: open_clip's CLIP (text tower frozen).
    """
    b, r, _ = context.shape
    length = tokens.shape[1]
    eot = tokens.argmax(dim=-1)  # the end token has the highest id
    words = model.token_embedding(tokens)
    x = torch.stack([
        torch.cat([words[i, :p].expand(b, -1, -1), context, words[i, p:length - r].expand(b, -1, -1)], dim=1)
        for i, p in enumerate(eot.tolist())
    ], dim=1).flatten(0, 1)  # (B·S, L, W), image-major
    x = prompts(x + model.positional_embedding, model.transformer, model.attn_mask)
    x = model.ln_final(x)
    pooled = x[torch.arange(len(x), device=x.device), (eot + r).repeat(b)]
    projection = model.text_projection
    z = projection(pooled) if isinstance(projection, nn.Module) else pooled @ projection
    return F.normalize(z, dim=-1).view(b, len(tokens), -1)


def layer_logits(
    params: VCPParameters, name: str, tokens: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 2, h, w)`` logits of one layer for the pre and the post branch.

    tokens: the layer's patch map ``(B, C, h, w)``; text: ``(B, 2, D)`` per-image text embeddings.
    """
    b, _, h, w = tokens.shape
    patches = F.normalize(tokens.flatten(2).transpose(1, 2), dim=-1)
    adapted = F.normalize(params.adapters(name, tokens), dim=-1)
    pre = params.pre.log_scale.exp() * adapted @ text.transpose(1, 2)
    post = params.post.log_scale.exp() * patches @ params.post(text, patches).transpose(1, 2)
    return pre.transpose(1, 2).reshape(b, 2, h, w), post.transpose(1, 2).reshape(b, 2, h, w)


def probabilities(logits: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Softmax over the two classes, after bilinear upsampling (``align_corners=True``) to ``size``."""
    if size is not None:
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
    return logits.softmax(dim=1)


def branch_maps(
    logits: Sequence[tuple[torch.Tensor, torch.Tensor]], size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre and post maps ``(B, H, W)``: per branch, the mean over layers of the abnormal probability."""
    pre = torch.stack([probabilities(p, size)[:, 1] for p, _ in logits]).mean(dim=0)
    post = torch.stack([probabilities(q, size)[:, 1] for _, q in logits]).mean(dim=0)
    return pre, post


def fuse(pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """The anomaly map ``ALPHA · pre + (1 - ALPHA) · post``."""
    return ALPHA * pre + (1 - ALPHA) * post


def top_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """``(B,)`` mean of the ``k`` largest values of each map (all of them if fewer)."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


# --------------------------------------------------------------------------- checkpoints


def official_to_bench(checkpoint: dict, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """An official checkpoint (see the module docstring) → our state dict. ValueError if it does not fit."""
    linears = linear_layers_to_bench(dict(checkpoint["trainable_linearlayer"]), layers)
    state = {f"adapters.{k}": v for k, v in linears.items()}
    pre = dict(checkpoint["New_Lan_Embed"])
    state.update({"pre.query": pre["prompt_query"], "pre.conv.weight": pre["prompt_linear1.fc.weight"],
                  "pre.conv.bias": pre["prompt_linear1.fc.bias"], "pre.log_scale": pre["prompt_temp"]})
    post = dict(checkpoint["Zero_try"])
    for official, ours in (("q_proj_pre", "q"), ("k_proj_pre_1", "k"), ("v_proj_pre_1", "v"), ("proj_post_t", "out")):
        state[f"post.{ours}.weight"] = post[f"{official}.weight"].squeeze(-1)
        state[f"post.{ours}.bias"] = post[f"{official}.bias"]
    state["post.log_scale"] = post["prompt_temp_l1"]
    state.update({"prompts.shallow": checkpoint["prompt_embeddings"], "prompts.deep": checkpoint["deep_prompt_embeddings"]})
    for part in ("proj", "norm"):
        for kind in ("weight", "bias"):
            state[f"prompts.{part}.{kind}"] = checkpoint[f"prompt_{part}.{kind}"]
    return state


def _load_state(params: VCPParameters, state: dict[str, torch.Tensor]) -> None:
    """Strict load with one clear ValueError for a missing, unexpected or mis-shaped entry."""
    expected = params.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    if unexpected:
        raise ValueError(f"unexpected entries {', '.join(unexpected)}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{key} has shape {tuple(state[key].shape)}, the backbone needs {tuple(value.shape)}; "
                f"the checkpoint was made for another backbone or layers"
            )
    params.load_state_dict({k: torch.as_tensor(v).float() for k, v in state.items()})


def load_vcp(path: str | Path, params: VCPParameters) -> str:
    """Load an official or a bench checkpoint into ``params``; returns its kind ("official" | "bench").

    Anything missing, unreadable or not fitting is a ``WeightsError`` naming the file.
    """
    path = Path(path).expanduser()
    obj = load_checkpoint(path, "VCP-CLIP", "checkpoint")
    try:
        if is_bench_checkpoint(obj, FORMAT, FORMAT_VERSION, params.layers):
            state, kind = dict(obj["state_dict"]), "bench"
        elif isinstance(obj, dict) and all(part in obj for part in OFFICIAL_PARTS):
            state, kind = official_to_bench(obj, params.layers), "official"
        else:
            keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(
                f"not a VCP-CLIP checkpoint (expected the official {{{', '.join(OFFICIAL_PARTS)}, prompt_*}} "
                f"or a file saved by bench's train_vcp / save_vcp; found {keys})"
            )
        _load_state(params, state)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
        raise WeightsError(f"VCP-CLIP checkpoint {path}: {reason}") from None
    return kind


def save_vcp(method: VCPCLIP, path: str | Path) -> Path:
    """Save a bound method's learned parameters (bench format, ``torch.save``); returns the path."""
    params = method._require_bound()
    return save_learned(path, FORMAT, FORMAT_VERSION, params.state_dict(), method.provenance,
                        layers=list(params.layers))


# --------------------------------------------------------------------------- the method


class VCPCLIP(Method):
    """VCP-CLIP zero-shot (see the module docstring).

    checkpoint: the official checkpoint, a file saved by ``train_vcp`` / ``save_vcp``, or
    ``"untrained"`` (meaningless maps: tests and smoke runs only). Required.
    resolution: ``"grid"`` (default) maps on the patch grid; ``"input"`` the official order, logits
    upsampled to the input size before the softmax.
    quick_gelu: the CLIP activation asked of the backbone (official: False, exact GELU).
    init_seed: seed of the ``"untrained"`` initialisation.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        resolution: str = "grid",
        quick_gelu: bool = False,
        init_seed: int = 0,
    ) -> None:
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"vcpclip resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.resolution = resolution
        self.quick_gelu = bool(quick_gelu)
        self.init_seed = int(init_seed)
        self.params: VCPParameters | None = None
        self.provenance: dict[str, object] = {}
        self._backbone: Backbone | None = None
        self._tokens: torch.Tensor | None = None
        self._device = torch.device("cpu")
        self.info = MethodInfo(
            name="vcpclip",
            paper=PAPER,
            arxiv=ARXIV,
            default_backbone=OFFICIAL_BACKBONE,
            needs_auxiliary_training=True,
            settings={
                "checkpoint": self.checkpoint or "required (untrained with --weights random)",
                "prompts": f"{PROMPTS[0]!r} / {PROMPTS[1]!r} + {N_CONTEXT} Pre-VCP category tokens; "
                           f"{N_PROMPT} deep text prompt token per text block (dropout {PROMPT_DROPOUT} in training)",
                "layers": "ViT-L-14-336: blocks 6/12/18/24 at 518 px (others: the backbone's default)",
                "quick_gelu": self.quick_gelu,
                "pre_vcp": "query + Conv1d(1->2, k3)(unnormalised image embedding)",
                "post_vcp": f"{POST_HEADS}-head text->patch attention, no 1/sqrt(d) scaling, normalised",
                "map": f"{ALPHA} * pre + {1 - ALPHA} * post; each the mean over layers of "
                       "softmax(exp(tau) cos)[abnormal]",
                "resolution": self.resolution,
                "image_score": f"mean of the top {TOP_K} input-size pixels of the pre map + the same of the post map",
                "training": f"focal + dice per layer and branch; Adam betas {TRAIN_BETAS}, lr {TRAIN_LR} "
                            f"(temperatures {TEMPERATURE_LR}), batch {TRAIN_BATCH_SIZE}, {TRAIN_EPOCHS} epochs, "
                            f"seed {TRAIN_SEED}; augmentations, mosaics 0.2 on MVTec AD",
                "init_seed": self.init_seed,
            },
            deviations=DEVIATIONS,
        )

    def backbone_options(self, backbone: str) -> dict[str, object]:
        """Every open_clip ViT: the unnormalised embedding extra and exact GELU; the official layers and size on ViT-L-14-336."""
        if backbone not in ARCHS:
            return {}
        options: dict[str, object] = {"quick_gelu": self.quick_gelu, "extras": {EMBEDDING_LAYER: {}}}
        if backbone == OFFICIAL_BACKBONE:
            options.update(layers=OFFICIAL_LAYERS, input_size=OFFICIAL_SIZE)
        return options

    # -- binding
    def bind(self, backbone: Backbone) -> None:
        """Check the backbone (open_clip with the embedding extra), build and load the parameters."""
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
        layers = depth_order(list(channels))
        self._device = torch.device(getattr(backbone, "device", "cpu"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            params = VCPParameters(layers, widths.pop(), dim, len(model.transformer.resblocks))
        path = learned_source(self.checkpoint, backbone, "vcpclip", "checkpoint", CHECKPOINT_HELP)
        kind = load_vcp(path, params) if path is not None else UNTRAINED
        self.params = params.to(self._device).eval().requires_grad_(False)
        self._tokens = backbone.tokenizer(list(PROMPTS)).to(self._device)
        self._backbone = backbone
        quick_gelu = getattr(backbone, "quick_gelu", None)
        self.provenance = {"source": kind, "backbone": backbone.name, "weights": str(getattr(backbone, "weights", "")),
                           "quick_gelu": quick_gelu, "input_size": int(backbone.input_size), "layers": list(layers)}
        self.info.settings.update(checkpoint=str(path) if path is not None else UNTRAINED, checkpoint_source=kind,
                                  learned_layers=list(layers), quick_gelu=quick_gelu)

    def _require_bound(self) -> VCPParameters:
        if self.params is None or self._backbone is None:
            raise ConfigError("vcpclip: call bind(backbone) before scoring (the Runner does it)")
        return self.params

    def text(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, 2, D)`` normal/abnormal text embeddings of images with unnormalised embeddings ``(B, D)``."""
        params = self._require_bound()
        return prompted_text(self._backbone.model, self._tokens, params.pre(embedding), params.prompts)

    def logits(self, features: FeatureSet) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per learned layer, the ``(B, 2, h, w)`` pre and post logits of a batch (with autograd)."""
        params = self._require_bound()
        missing = [name for name in (*params.layers, EMBEDDING_LAYER) if name not in features.layers]
        if missing:
            raise ConfigError(
                f"vcpclip: the features lack layer(s) {', '.join(missing)} (features have "
                f"{', '.join(features.layers) or 'none'}); score features of the backbone it was bound to"
            )
        text = self.text(features.layers[EMBEDDING_LAYER].to(self._device, torch.float32).flatten(1))
        return [layer_logits(params, name, features.layers[name].to(self._device, torch.float32), text)
                for name in params.layers]

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and image scores of each image (``reference`` is ignored: per-image method)."""
        self._require_bound()
        size = int(self._backbone.input_size)
        maps, scores = [], []
        with torch.no_grad():
            for start in range(0, len(features), SCORE_CHUNK):
                logits = self.logits(features.select(slice(start, start + SCORE_CHUNK)))
                pre, post = branch_maps(logits, size)
                scores.append((top_mean(pre, TOP_K) + top_mean(post, TOP_K)).cpu())
                if self.resolution == "grid":
                    pre, post = branch_maps(logits)
                maps.append(fuse(pre, post).cpu())
        if not maps:
            h, w = features.layers[self.params.layers[0]].shape[-2:]
            side = (size, size) if self.resolution == "input" else (h, w)
            return ScoreOutput(torch.zeros(0), torch.zeros(0, *side))
        return ScoreOutput(image_scores=torch.cat(scores), maps=torch.cat(maps))


@METHODS.register(
    "vcpclip",
    "VCP-CLIP (ECCV 2024): CLIP text prompts with visual context (Pre-/Post-VCP); needs prompts trained "
    "on an auxiliary dataset (set its checkpoint option)",
)
def create(
    checkpoint: str | None = None,
    resolution: str = "grid",
    quick_gelu: bool = False,
    init_seed: int = 0,
) -> VCPCLIP:
    """VCP-CLIP zero-shot.

    checkpoint: official checkpoint (train_visa.pth / train_mvtec.pth), a file saved by
    bench.methods.vcpclip.train_vcp, or 'untrained' (tests and smoke runs only). Required.
    resolution: 'grid' (softmax per patch, the protocol upsamples) or 'input' (official order).
    quick_gelu: CLIP activation (official False: exact GELU). init_seed: seed of 'untrained'.
    """
    return VCPCLIP(checkpoint=checkpoint, resolution=resolution, quick_gelu=quick_gelu, init_seed=init_seed)


# --------------------------------------------------------------------------- training


def _color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """albumentations' ColorJitter defaults: brightness, contrast, saturation ±0.2, hue ±0.2, random order."""
    from torchvision.transforms import functional as TF

    steps = [(TF.adjust_brightness, rng.uniform(0.8, 1.2)), (TF.adjust_contrast, rng.uniform(0.8, 1.2)),
             (TF.adjust_saturation, rng.uniform(0.8, 1.2)), (TF.adjust_hue, rng.uniform(-0.2, 0.2))]
    pil = Image.fromarray(image)
    for i in rng.permutation(len(steps)):
        adjust, factor = steps[i]
        pil = adjust(pil, float(factor))
    return np.asarray(pil)


def _u8(image: np.ndarray) -> np.ndarray:
    """Back to uint8 after each step, as albumentations does."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The official training augmentation (module docstring) of a uint8 image and its {0, 1} mask."""
    if rng.random() < 0.5:  # Rotate(limit=30): bilinear, BORDER_REFLECT_101 (scipy "mirror"); mask nearest
        angle = rng.uniform(-30, 30)
        image = _u8(ndimage.rotate(image.astype(np.float32), angle, axes=(1, 0), reshape=False, order=1, mode="mirror"))
        mask = ndimage.rotate(mask, angle, axes=(1, 0), reshape=False, order=0, mode="mirror")
    if rng.random() < 0.5:  # RandomRotate90
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:  # RandomBrightnessContrast(0.2, 0.2), brightness by max
        image = _u8(image * (1 + rng.uniform(-0.2, 0.2)) + 255 * rng.uniform(-0.2, 0.2))
    if rng.random() < 0.5:  # GaussNoise(var_limit=(10, 50)), per channel
        image = _u8(image + rng.normal(0.0, math.sqrt(rng.uniform(10, 50)), image.shape))
    if rng.random() < 0.5:  # OneOf(Blur(3), ColorJitter(), GaussianBlur((3, 7))), equal weights
        choice = int(rng.integers(3))
        if choice == 0:
            image = _u8(ndimage.uniform_filter(image.astype(np.float32), size=(3, 3, 1), mode="mirror"))
        elif choice == 1:
            image = _color_jitter(image, rng)
        else:
            k = int(rng.choice([3, 5, 7]))
            sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for sigma=0
            image = _u8(ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0), mode="mirror",
                                               truncate=(k // 2) / sigma))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _anomalous_pools(data: AuxiliaryData) -> AuxiliaryData:
    """Mosaic tiles as the official code draws them: uniformly among a category's anomalous images."""
    pools = {}
    for category, by_defect in data.pools.items():
        anomalous = [s for s in data.samples if s.category == category and s.label == 1]
        pools[category] = {"anomaly": anomalous} if anomalous else by_defect
    return dataclasses.replace(data, pools=pools)


def train_vcp(
    method: VCPCLIP,
    backbone: Backbone,
    dataset: Dataset | str | Path,
    categories: Sequence[str] | None = None,
    epochs: int = TRAIN_EPOCHS,
    lr: float | None = None,
    batch_size: int = TRAIN_BATCH_SIZE,
    mosaic_rate: float | None = None,
    augmentation: bool = True,
    seed: int = TRAIN_SEED,
    save: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``method``'s parameters on an auxiliary dataset's test images and masks (official ``train.py``).

    method: a VCP-CLIP method; its current parameters are the starting point (``checkpoint=
    "untrained"`` to train from scratch). It is bound to ``backbone`` first when it is not
    already; afterwards it scores with the new parameters.
    dataset: a bench Dataset or a dataset root; the convention: VisA parameters for testing on
    MVTec AD, MVTec AD parameters for VisA.
    categories: the categories trained on (default all, shuffled together).
    epochs, batch_size, seed: official 10, 32, 333 (seeds the order, the augmentations and
    torch's global generator, which draws the prompt dropout).
    lr: None = official for the dataset (4e-5 on VisA, 2e-5 on MVTec AD; required otherwise); the
    temperatures always use 0.01. Adam with betas (0.5, 0.999).
    mosaic_rate: 2x2 mosaics of anomalous images; None = official (0.2 on MVTec AD, else 0).
    augmentation: the official random augmentations (module docstring).
    save: write the trained parameters there (``save_vcp``), loadable with ``checkpoint=PATH``.
    max_steps: stop after this many optimiser steps (None: all epochs).
    Returns the loss of every step.
    """
    if not isinstance(method, VCPCLIP):
        raise ConfigError(f"train_vcp trains a VCP-CLIP method, got {type(method).__name__}")
    data = AuxiliaryData.open(dataset, categories)
    lr = official_setting(lr, TRAIN_LR, data, "train_vcp", "lr")
    rate = float(official_setting(mosaic_rate, OFFICIAL_MOSAIC_RATE, data, "train_vcp", "mosaic_rate", 0.0))
    check_training("train_vcp", epochs, batch_size, lr, rate, max_steps)
    if rate > 0:
        data = _anomalous_pools(data)
    if method._backbone is not backbone:
        method.bind(backbone)
    params = method._require_bound()
    size = int(backbone.input_size)
    rng = np.random.default_rng(int(seed))  # the order, the mosaics and the augmentations
    torch.manual_seed(int(seed))  # the prompt dropout

    def step_loss(batch: AuxiliaryBatch) -> torch.Tensor:
        images = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in batch.images]
        masks = batch.masks.numpy()
        if augmentation:
            images, masks = zip(*(augment(im, m, rng) for im, m in zip(images, masks)))
        gt = torch.from_numpy(np.stack(masks)).float().to(method._device)
        loss = torch.zeros((), device=method._device)
        for logits in method.logits(backbone.features(backbone.preprocess(list(images)))):
            for branch in logits:
                probs = probabilities(branch, size)
                loss = loss + focal_loss(probs, gt) + dice_loss(probs[:, 1], gt)
        return loss

    temperatures = [params.pre.log_scale, params.post.log_scale]
    others = [p for p in params.parameters() if all(p is not t for t in temperatures)]
    optimizer = torch.optim.Adam([{"params": others, "lr": float(lr)}, {"params": temperatures, "lr": TEMPERATURE_LR}],
                                 betas=TRAIN_BETAS)
    losses = fit_on_auxiliary([params], optimizer, data, step_loss, epochs=int(epochs), batch_size=int(batch_size),
                              size=size, mosaic_rate=rate, rng=rng, max_steps=max_steps, progress=progress,
                              desc="vcpclip")
    trained = training_meta(data, losses, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                            mosaic_rate=rate, augmentation=bool(augmentation), seed=int(seed))
    method.provenance = {**method.provenance, "source": "bench", "trained": trained}
    method.info.settings.update(checkpoint_source="trained in this process", trained=trained)
    if save is not None:
        save_vcp(method, save)
    return losses
