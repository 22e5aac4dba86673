"""What the CLIP methods share about text: the backbone's text tower, prompt ensembles, object names.

APRIL-GAN, WinCLIP and AdaCLIP describe the normal and the abnormal class of an object by an
ensemble of sentences (states × templates around the object's name) whose embeddings they average
per class; each method keeps its own lists and averaging rule. Not a registered plugin (leading
underscore).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.interfaces import Backbone

T = TypeVar("T")

# APRIL-GAN's prompt_ensemble.py states (object name in {}), which AdaCLIP reuses with its own templates.
NORMAL_STATES: tuple[str, ...] = (
    "{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage",
)


def require_clip(backbone: Backbone, method: str, official: str, tower: bool = False) -> None:
    """A ConfigError unless ``backbone`` is a CLIP with its text tower: ``encode_text``, or with
    ``tower`` the open_clip model's token embedding and tokenizer (methods that run the text tower
    with learned tokens inside). ``official``: the backbone to suggest."""
    if tower:
        missing = "open_clip text tower (model.token_embedding, tokenizer)"
        ok = hasattr(getattr(backbone, "model", None), "token_embedding") and hasattr(backbone, "tokenizer")
    else:
        missing, ok = "encode_text", callable(getattr(backbone, "encode_text", None))
    if not ok:
        raise ConfigError(
            f"{method} compares image features with CLIP text and needs an open_clip ViT backbone with its text "
            f"tower (such as {official}, ViT-B-16, ViT-B-32, ViT-L-14); backbone "
            f"{getattr(backbone, 'name', type(backbone).__name__)!r} has no {missing}"
        )


def ensemble_sentences(name: str, states: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template around every state of object ``name``, state-major: ``template.format(state.format(name))``."""
    return [t.format(s.format(name)) for s in states for t in templates]


def class_embedding(sentences: torch.Tensor, normalize_sentences: bool = True) -> torch.Tensor:
    """``(..., N, D)`` sentence embeddings → ``(..., D)``: the L2-normalised mean of the sentences,
    each L2-normalised first (``normalize_sentences=False``: the mean of the raw embeddings)."""
    z = sentences.float()
    if normalize_sentences:
        z = F.normalize(z, dim=-1)
    return F.normalize(z.mean(dim=-2), dim=-1)


def ensemble_embeddings(
    encode: Callable[[list[str]], torch.Tensor], classes: Sequence[Sequence[str]], normalize_sentences: bool = True
) -> torch.Tensor:
    """``(D, K)``: column k the ``class_embedding`` of the k-th sentence list, embedded by ``encode``."""
    return torch.stack([class_embedding(encode(list(c)), normalize_sentences) for c in classes], dim=1)


class ObjectPrompts(Generic[T]):
    """Which object name a method puts in its prompts (the ``object_name`` option when set, else the
    images' category), and what it computes once per name (text embeddings, token ids)."""

    def __init__(self, method: str, object_name: str | None = None) -> None:
        if object_name is not None and not str(object_name).strip():
            raise ConfigError(f"{method} object_name must be a non-empty string or None (the category name)")
        self.method = method
        self.object_name = None if object_name is None else str(object_name)
        self.cache: dict[str, T] = {}

    def object_for(self, category: str | None) -> str:
        """The object name in the prompts for images of ``category``."""
        if self.object_name is not None:
            return self.object_name
        if category is not None:
            return category
        raise ConfigError(
            f"{self.method} puts the object name in its prompts, but these features carry no category: "
            "set FeatureSet.category or the object_name option"
        )

    def get(self, name: str, compute: Callable[[str], T]) -> T:
        """``compute(name)``, computed once per name (until ``cache.clear()``, at each binding)."""
        if name not in self.cache:
            self.cache[name] = compute(name)
        return self.cache[name]
