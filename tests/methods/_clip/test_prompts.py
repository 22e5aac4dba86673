"""What the CLIP methods share about text (bench/methods/_clip/prompts.py): sentence ensembles, the class
embedding by hand (normalised and raw sentence means), the object name and its cache, the CLIP check."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bench.errors import ConfigError
from bench.methods._clip import prompts as P
from fakes import TinyBackbone


def test_sentences_are_every_template_around_every_state_state_major():
    sentences = P.ensemble_sentences("nut", ("{}", "damaged {}"), ("a {}.", "the {}!"))
    assert sentences == ["a nut.", "the nut!", "a damaged nut.", "the damaged nut!"]


def test_class_embedding_by_hand():
    z = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    unit = torch.tensor([0.3, 0.9]) / math.hypot(0.3, 0.9)  # mean of (0.6, 0.8) and (0, 1), normalised
    raw = torch.tensor([1.5, 3.0]) / math.hypot(1.5, 3.0)  # mean of the raw rows, normalised
    torch.testing.assert_close(P.class_embedding(z), unit)
    torch.testing.assert_close(P.class_embedding(z, normalize_sentences=False), raw)
    torch.testing.assert_close(P.class_embedding(torch.stack([z, z.flip(0)])), torch.stack([unit, unit]))  # per row
    table = {"a": z[0], "b": z[1], "c": torch.tensor([0.0, -5.0])}
    columns = P.ensemble_embeddings(lambda s: torch.stack([table[x] for x in s]), [["a", "b"], ["c"]])
    torch.testing.assert_close(columns, torch.stack([unit, torch.tensor([0.0, -1.0])], dim=1))


def test_object_name_and_the_per_name_cache():
    prompts = P.ObjectPrompts("m")
    assert prompts.object_for("pill") == "pill"
    with pytest.raises(ConfigError, match="m puts the object name .*object_name"):
        prompts.object_for(None)
    named = P.ObjectPrompts("m", "capsule")
    assert named.object_for("pill") == named.object_for(None) == "capsule"
    with pytest.raises(ConfigError, match="m object_name must be a non-empty string"):
        P.ObjectPrompts("m", " ")
    calls = []

    def compute(name):
        calls.append(name)
        return name.upper()

    assert [prompts.get(n, compute) for n in ("a", "b", "a")] == ["A", "B", "A"] and calls == ["a", "b"]
    prompts.cache.clear()
    assert prompts.get("a", compute) == "A" and calls == ["a", "b", "a"]


def test_require_clip_names_what_is_missing():
    P.require_clip(SimpleNamespace(encode_text=lambda s: s), "m", "ViT-X")
    with pytest.raises(ConfigError, match=r"^m .*ViT-X.*backbone 'tiny' has no encode_text"):
        P.require_clip(TinyBackbone(), "m", "ViT-X")
    tower = SimpleNamespace(model=SimpleNamespace(token_embedding=None), tokenizer=str)
    P.require_clip(tower, "m", "ViT-X", tower=True)
    with pytest.raises(ConfigError, match="has no open_clip text tower"):
        P.require_clip(SimpleNamespace(encode_text=str, model=None, tokenizer=str), "m", "ViT-X", tower=True)
