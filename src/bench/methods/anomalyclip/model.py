"""AnomalyCLIP's network: the object-agnostic learned text prompts in CLIP's text tower, and the map and
image score against the V-V (DPAM) tokens."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

OBJECT = "object"  # prompt_ensemble.py: classnames = ["object"]
STATES = ("{}", "damaged {}")  # state_normal_list, state_anomaly_list
PROMPT_LENGTH = 12  # --n_ctx
DEEP_DEPTH = 9  # --depth: the context at the input plus 8 deep prompt sets
DEEP_LENGTH = 4  # --t_n_ctx
INIT_STD = 0.02
TEMPERATURE = 0.07  # compute_similarity and the image score: softmax(cos / 0.07)


class ObjectAgnosticPrompts(nn.Module):
    """The learned text parts: ``ctx`` ``(2, prompt_length, width)`` (row 0 the normal sentence, row 1
    the anomalous one) and ``deep`` ``(deep_depth - 1, deep_length, width)`` (set i enters text block
    i + 2, 1-based), initialised N(0, 0.02²) as the official ones."""

    def __init__(self, width: int, prompt_length: int = PROMPT_LENGTH, deep_depth: int = DEEP_DEPTH,
                 deep_length: int = DEEP_LENGTH) -> None:
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(2, prompt_length, width) * INIT_STD)
        self.deep = nn.Parameter(torch.randn(deep_depth - 1, deep_length, width) * INIT_STD)


def prompt_tokens(tokenizer, prompt_length: int) -> torch.Tensor:
    """``(2, context)`` tokens of ``"X … X object."`` and ``"X … X damaged object."`` (one X per context vector)."""
    prefix = " ".join(["X"] * prompt_length)
    return tokenizer([f"{prefix} {state.format(OBJECT)}." for state in STATES])


def encode_prompts(model: nn.Module, tokens: torch.Tensor, prompts: ObjectAgnosticPrompts) -> torch.Tensor:
    """``(2, D)`` text features (not normalised) of the two sentences with the learned context and deep prompts.

    ``model``: an open_clip CLIP (batch-first text transformer). The context replaces the token
    embeddings after the start token; deep prompt set i replaces tokens 1..deep_length at the
    input of text block i + 2 (1-based); the end-of-text token is pooled and projected.
    """
    n = prompts.ctx.shape[1]
    x = model.token_embedding(tokens)
    x = torch.cat([x[:, :1], prompts.ctx.to(x.dtype), x[:, 1 + n :]], dim=1) + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(prompts.deep):
            # rounded to fp16 as the official text blocks do (``textual_context...half()``)
            deep = prompts.deep[i - 1].half().to(x.dtype).expand(len(x), -1, -1)
            x = torch.cat([x[:, :1], deep, x[:, 1 + deep.shape[1] :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(len(x)), tokens.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection



def class_probabilities(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B, 2, h, w)``: softmax over (normal, anomalous) of cos(token, T) / 0.07; ``tokens`` ``(B, D, h, w)``."""
    logits = torch.einsum("bdhw,dk->bkhw", F.normalize(tokens, dim=1), text) / TEMPERATURE
    return logits.softmax(dim=1)


def anomaly_map(tokens: Sequence[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)``: sum over the layers' projected tokens of the anomalous probability."""
    return sum(class_probabilities(t, text)[:, 1] for t in tokens)


def image_logits(embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B, 2)``: cos(e, T) / 0.07 of image features ``(B, D)``."""
    return F.normalize(embedding, dim=-1) @ text / TEMPERATURE

