"""APRIL-GAN's network: the prompt ensemble, the adapted patch tokens against it, the image score."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.methods._clip.adapters import Adapters
from bench.methods._clip.prompts import ABNORMAL_STATES, NORMAL_STATES, ensemble_embeddings, ensemble_sentences
from bench.ops import upsample

TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)
LOGIT_SCALE = 100.0  # test.py / train.py: 100.0 * tokens @ text (fixed, not CLIP's learned scale)


def prompt_sentences(name: str) -> tuple[list[str], list[str]]:
    """The (normal, abnormal) sentences of object ``name``: states × templates, state-major."""
    return ensemble_sentences(name, NORMAL_STATES, TEMPLATES), ensemble_sentences(name, ABNORMAL_STATES, TEMPLATES)


def class_text_embeddings(encode: Callable[[list[str]], torch.Tensor], name: str) -> torch.Tensor:
    """``(D, 2)``: per class, the L2-normalised mean of the L2-normalised sentence embeddings."""
    return ensemble_embeddings(encode, prompt_sentences(name))


def layer_logits(adapters: Adapters, name: str, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B, 2, h, w)`` logits ``100 · normalise(A_l(x)) · T`` of one layer.

    ``text``: ``(D, 2)`` for the whole batch or ``(B, D, 2)`` per image.
    """
    b, _, h, w = tokens.shape
    z = F.normalize(adapters(name, tokens), dim=-1)  # (B, P, D)
    logits = LOGIT_SCALE * (z @ text)  # (B, P, 2), broadcasting a shared (D, 2)
    return logits.transpose(1, 2).reshape(b, 2, h, w)


def anomaly_maps(
    layers: dict[str, torch.Tensor], adapters: Adapters, text: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """Sum over the adapter layers of the abnormal-class softmax: ``(B, h, w)``, or ``(B, size, size)``.

    ``size=None``: softmax on the patch grid. ``size``: the official order, logits upsampled
    bilinearly (``align_corners=True``) to ``size`` first, then the softmax.
    """
    total = None
    for name in adapters.layers:
        logits = layer_logits(adapters, name, layers[name], text)
        if size is not None:
            logits = upsample(logits, (size, size), align_corners=True)
        part = logits.softmax(dim=1)[:, 1]
        total = part if total is None else total + part
    return total


def abnormal_probability(embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B,)`` zero-shot image score: ``softmax(100 · ê T)[1]``, ê the L2-normalised embedding."""
    e = F.normalize(embedding.float(), dim=-1)
    if text.ndim == 2:
        logits = LOGIT_SCALE * (e @ text)
    else:
        logits = LOGIT_SCALE * torch.einsum("bd,bdk->bk", e, text)
    return logits.softmax(dim=-1)[:, 1]

