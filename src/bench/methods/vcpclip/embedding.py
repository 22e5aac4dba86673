"""The CLIP image embedding before L2 normalisation, for VCP-CLIP's Pre-VCP module.

``FeatureSet.embedding`` is L2-normalised. VCP-CLIP (Qu et al., ECCV 2024, arXiv 2407.12276;
official code xiaozhen228/VCP-CLIP, ``models/transformer.py`` and ``models/pre_vcp.py``) feeds the
*unnormalised* projected class token (``ln_post`` of the class token, ``@ proj``: what its image
tower returns) through a Conv1d with a bias, so the embedding's length changes the text prompts
and cannot be recovered from the normalised vector.

The backbone's FeatureSet keeps only the normalised embedding; this extra keeps the unnormalised
one of the same pass (VCP-CLIP modifies nothing in the image tower), at no extra forward.

Layer ``vcp_embedding``: ``(B, D, 1, 1)``, D the joint image-text dimension.
"""
from __future__ import annotations

import torch

from bench.backbones.openclip import OpenClipBackbone
from bench.interfaces import BackboneExtra

LAYER = "vcp_embedding"


class VcpEmbedding(BackboneExtra):
    """The projected class token of the image tower, not normalised (see the module docstring)."""

    name = LAYER

    def __init__(self, backbone: OpenClipBackbone) -> None:
        self.channels = {LAYER: backbone.embedding_dim}

    def identity(self) -> dict[str, object]:
        return {}

    def compute(self, x: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        return {LAYER: embedding[:, :, None, None]}
