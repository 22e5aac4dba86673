"""DPAM: AnomalyCLIP's V-V attention path through the last ViT blocks, and its image feature.

Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
ICLR 2024, arXiv 2310.18961 (the "diagonally prominent attention map"). Official code
zqhang/AnomalyCLIP, ``AnomalyCLIP_lib/AnomalyCLIP.py`` (``Attention``, ``ResidualAttentionBlock``,
``VisionTransformer.DAPM_replace`` and ``forward``), read for the computation; this is our own code.

The official ``DAPM_replace(DPAM_layer=20)`` gives the last 19 blocks of ViT-L-14-336 (blocks
6..24, 1-based) a second, V-V path (run with ``ffn=False``). With x_j the ordinary token stream
after block j (class token included) and s the first V-V block, that path is

    z_s = x_{s-1} + VV_s(ln_1(x_{s-1}))
    z_j = z_{j-1} + VV_j(ln_1(x_{j-1}))            for j = s+1 .. depth

where VV_j is block j's attention with queries and keys replaced by the values: per head
``softmax(v vᵀ / √d_head) v`` with ``v = ln_1(x) W_v + b_v``, then the block's output projection.
The V-V path has no MLP, reads the *ordinary* stream at every block and never feeds it back, so
the ordinary stream stays CLIP's own (the backbone's ``block<N>`` layers are unchanged).

Layers it adds (``channels``):

- ``dpam.block<N>``: z_N without the class token, before ``ln_post``, ``(B, width, h, w)``, as the
  backbone's ``block<N>`` [the official ``out_tokens`` of ``features_list``, before its
  ``ln_post @ proj``];
- ``dpam.embedding``: ``(B, embed_dim, 1, 1)``, the last block's class token ``@ proj`` **without**
  ``ln_post``: the image feature the official encoder returns (``x_ori[0] @ proj``) and scores
  images with; CLIP's own embedding (``FeatureSet.embedding``) applies ``ln_post`` first.

Options: ``layers``, the V-V outputs (``block<N>`` names; default: the backbone's layers);
``start``, the first V-V block (default: the shallowest of ``layers``, which on ViT-L-14-336 with
blocks 6/12/18/24 is the official block 6). The extra runs its own pass through the ViT.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.openclip import parse_layer
from bench.errors import ConfigError
from bench.interfaces import BackboneExtra

PREFIX = "dpam."
EMBEDDING = "dpam.embedding"


def vv_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Block's self-attention with q = k = v on ``(B, N, width)`` tokens: ``out_proj(softmax(v vᵀ/√d) v)``."""
    attn = block.attn
    width = x.shape[-1]
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width :]
    v = F.linear(x, attn.in_proj_weight[2 * width :], bias)
    v = v.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)  # (B, heads, N, d_head)
    out = F.scaled_dot_product_attention(v, v, v)  # scale 1/√d_head, as the official Attention
    return attn.out_proj(out.transpose(1, 2).flatten(2))


class DPAM(BackboneExtra):
    """V-V attention outputs of chosen blocks and the official AnomalyCLIP image feature (module docstring)."""

    name = "dpam"

    def __init__(self, backbone, layers: Sequence[str] | str | None = None, start: str | None = None) -> None:
        visual = backbone.model.visual
        blocks = visual.transformer.resblocks
        depth = len(blocks)
        if isinstance(layers, str):
            layers = [name.strip() for name in layers.split(",") if name.strip()]
        names = list(backbone.layers if layers is None else layers)
        if not names:
            raise ConfigError("dpam extra: layers must name at least one block (e.g. block24)")
        taps = {parse_layer(name, depth): name for name in names}
        first = min(taps) if start is None else parse_layer(str(start), depth)
        if min(taps) < first:
            raise ConfigError(
                f"dpam extra: layer {taps[min(taps)]} comes before the first V-V block block{first + 1}; "
                f"the V-V path exists from its start on"
            )
        if visual.proj is None or not all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks):
            raise ConfigError("dpam extra needs a CLIP ViT with plain multi-head attention blocks and a projection")
        self.visual = visual
        self.start = first
        self.taps = dict(sorted(taps.items()))
        self.channels = {PREFIX + name: int(visual.transformer.width) for name in self.taps.values()}
        self.channels[EMBEDDING] = int(visual.output_dim)

    def identity(self) -> dict[str, object]:
        return {"layers": list(self.taps.values()), "start": f"block{self.start + 1}"}

    def compute(self, x: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        visual = self.visual
        b = x.shape[0]
        h, w = x.shape[-2] // visual.patch_size[0], x.shape[-1] // visual.patch_size[1]
        tokens = visual._embeds(x)  # (B, 1 + h·w, width): patch + class + position embedding, ln_pre
        path = None
        out = {}
        for i, block in enumerate(visual.transformer.resblocks):
            if i >= self.start:
                vv = block.ls_1(vv_attention(block, block.ln_1(tokens)))
                path = (tokens if path is None else path) + vv
            tokens = block(tokens)
            if i in self.taps:
                out[PREFIX + self.taps[i]] = path[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2)
        out[EMBEDDING] = (tokens[:, 0] @ visual.proj)[:, :, None, None]
        return out
