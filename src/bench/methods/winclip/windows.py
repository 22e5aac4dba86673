"""Window embeddings: the CLIP image embedding of every k×k window of patches (WinCLIP's backbone extra).

WinCLIP (Jeong et al., CVPR 2023, arXiv 2303.14814) scores local regions by embedding each
sliding window of the patch grid as if it were a small image. As in the reference
implementation the field uses (anomalib's ``WinClipModel._get_window_embeddings``), a window's
embedding is the image tower run on a *subset* of its tokens: the tokens are made once per image
(patch embedding, class token, position embedding, ``ln_pre``), then the class token and the
k×k patch tokens of the window alone go through the transformer, ``ln_post`` and the
projection; the class token's output is the window's embedding. Masking after the position
embedding keeps each patch's place in the image; nothing else of the image reaches the window.
The two ends are open_clip's own ``VisionTransformer._embeds`` and ``_pool`` (what its
``forward`` runs; private helpers, present in the open_clip versions whose
``forward_intermediates`` the backbone uses), so no part of the tower is re-implemented here.

For each size k (in patch units, windows slide with stride 1 over the h×w grid) the layer
``window<k>`` is ``(B, D, h - k + 1, w - k + 1)``: entry ``[:, :, i, j]`` is the L2-normalised
embedding of the window whose top-left patch is ``(i, j)``. D is the joint image-text dimension.

Cost: a window is a sequence of 1 + k² tokens; all windows of a size are run as one batch of
short sequences, split into passes of at most ``CHUNK_TOKENS`` tokens to bound memory.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bench.backbones.openclip import OpenClipBackbone
from bench.errors import ConfigError
from bench.interfaces import BackboneExtra

CHUNK_TOKENS = 1 << 15  # tokens per transformer pass (window sequences × their length)


def window_index(grid: tuple[int, int], size: int) -> torch.Tensor:
    """``(n_windows, size²)`` row-major patch indices of each ``size``×``size`` window, stride 1.

    Windows are ordered row-major by their top-left patch, as the layer's ``(h', w')`` grid.
    """
    h, w = grid
    patches = torch.arange(h * w).view(h, w)
    windows = patches.unfold(0, size, 1).unfold(1, size, 1)  # (h', w', size, size)
    return windows.reshape(-1, size * size)


class WindowEmbeddings(BackboneExtra):
    """CLIP embeddings of all k×k patch windows, one layer ``window<k>`` per size (see module doc)."""

    name = "windows"

    def __init__(self, backbone: OpenClipBackbone, sizes: Sequence[int] = (2, 3)) -> None:
        sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
        grid = backbone.grid
        if not sizes or len(set(sizes)) != len(sizes) or any(not isinstance(k, int) or not 1 <= k <= grid for k in sizes):
            raise ConfigError(
                f"window sizes (e.g. winclip's scales) must be distinct integers in 1..{grid}: they are in "
                f"patches and the {backbone.name} grid at {backbone.input_size} px is {grid}x{grid}; got {list(sizes)}"
            )
        self.backbone = backbone
        self.sizes = sizes
        self.channels = {f"window{k}": backbone.embedding_dim for k in self.sizes}

    def identity(self) -> dict[str, object]:
        return {"sizes": list(self.sizes)}

    def compute(self, x: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        visual = self.backbone.model.visual
        grid = self.backbone.grid
        tokens = visual._embeds(x)  # (B, 1 + h·w, C): patches, class token, position embedding, ln_pre
        cls, patches = tokens[:, :1], tokens[:, 1:]
        out = {}
        for k in self.sizes:
            index = window_index((grid, grid), k).to(x.device)
            n = index.shape[0]
            pairs = torch.arange(len(x) * n, device=x.device)  # (image, window) pairs, image-major
            step = max(1, CHUNK_TOKENS // (1 + k * k))
            pooled = []
            for chunk in pairs.split(step):
                image, window = chunk // n, chunk % n
                seq = torch.cat([cls[image], patches[image[:, None], index[window]]], dim=1)
                z, _ = visual._pool(visual.transformer(seq))
                pooled.append(z @ visual.proj if visual.proj is not None else z)
            z = F.normalize(torch.cat(pooled).float(), dim=-1)
            side = grid - k + 1
            out[f"window{k}"] = z.view(len(x), side, side, -1).permute(0, 3, 1, 2)
        return out
