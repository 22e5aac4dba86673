"""AdaCLIP's network: hybrid prompts, the prompted text tower, the learned projections, the map and the
image score with hybrid semantic fusion (the prompted visual forward is the backbone extra, ``visual.py``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.methods._clip.prompts import ABNORMAL_STATES, NORMAL_STATES, ensemble_sentences
from bench.ops import upsample

OFFICIAL_LENGTH = 5  # train.py --prompting_length
OFFICIAL_DEPTH = 4  # train.py --prompting_depth
TEMPLATES: tuple[str, ...] = (  # TextEmbebddingLayer.prompt_templates (the states are APRIL-GAN's)
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.",
)
LOGIT_SCALE = 100.0
HSF_ALPHA = 0.2  # weight of the clustered feature in the image feature
K_CLUSTERS = 20  # --k_clusters
TOKENS_PER_CLUSTER = 5  # HSF keeps the 5k most abnormal patches
KMEANS_SEED = 0  # per image (official: numpy's global random state)


class HybridPrompts(nn.Module):
    """Static prompt tokens per prompted block and a generator of dynamic ones (one side: visual or text).

    ``static.<j>``: ``(length, channels)``, initialised N(0, 0.02²) as official; ``generator.<i>``:
    ``nn.Linear(embed_dim, channels)`` making the i-th dynamic token from an image embedding.
    """

    def __init__(self, channels: int, embed_dim: int, length: int, depth: int) -> None:
        super().__init__()
        self.length = int(length)
        self.depth = int(depth)
        self.static = nn.ParameterList([nn.Parameter(torch.empty(self.length, channels)) for _ in range(self.depth)])
        for tokens in self.static:
            nn.init.normal_(tokens, std=0.02)
        self.generator = nn.ModuleList([nn.Linear(embed_dim, channels) for _ in range(self.length)])

    def dynamic(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)`` image embeddings → ``(B, length, channels)`` dynamic prompts."""
        return torch.stack([layer(embedding) for layer in self.generator], dim=1)

    def context(self, block: int, dynamic: torch.Tensor) -> torch.Tensor:
        """The hybrid prompt of ``block``: its static tokens plus the dynamic ones, ``(B, length, channels)``,
        in fp16: the official ``PromptLayer`` rounds it (``.half()``) before it joins the tokens."""
        return (self.static[block] + dynamic).half()



class Head(nn.Module):
    """The method's learned parts: text prompts, one patch projection per layer, the image projection."""

    def __init__(self, n_layers: int, width: int, embed_dim: int, text_width: int, length: int, depth: int) -> None:
        super().__init__()
        self.text = HybridPrompts(text_width, embed_dim, length, depth)
        self.patch = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(n_layers)])
        self.image = nn.Linear(embed_dim, embed_dim)


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


def grid_logits(logits: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
    """``(B, P, 2)`` patch logits (row-major patches) → ``(B, 2, h, w)``."""
    return logits.transpose(1, 2).reshape(len(logits), 2, *side)


def anomaly_map(logits: Sequence[torch.Tensor], side: tuple[int, int], size: int | None = None) -> torch.Tensor:
    """``softmax(mean over layers of the logits)[abnormal]``: ``(B, h, w)``, or ``(B, size, size)``.

    ``size``: the official order, the mean logits upsampled bilinearly (``align_corners=True``)
    to ``size`` before the softmax.
    """
    mean = grid_logits(torch.stack(list(logits)).mean(dim=0), side)
    if size is not None:
        mean = upsample(mean, (size, size), align_corners=True)
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

