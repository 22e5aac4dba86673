"""VCP-CLIP's network: Pre-VCP, the deep text prompts, Post-VCP, and the maps and image score."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.methods._clip.adapters import Adapters
from bench.ops import upsample

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
        logits = upsample(logits, (size, size), align_corners=True)
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

