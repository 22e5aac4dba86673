"""AnomalyCLIP's checkpoints: the official release (``{"prompt_learner": state_dict}``, mapped onto
``ObjectAgnosticPrompts``) and bench's own (module docstring of the package)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.errors import WeightsError
from bench.methods._learned import learned_state, load_checkpoint
from bench.methods.anomalyclip.model import ObjectAgnosticPrompts

FORMAT = "bench.anomalyclip.prompts"
FORMAT_VERSION = 1
OFFICIAL_KEY = "prompt_learner"


def official_to_bench(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``AnomalyCLIP_PromptLearner`` keys → ours (see the module docstring).

    ``ctx_pos``/``ctx_neg`` ``(1, 1, n, width)`` → ``ctx`` ``(2, n, width)``;
    ``compound_prompts_text.<i>`` → ``deep[i]``. Raises ValueError when the keys do not fit.
    """
    ctx = []
    for key in ("ctx_pos", "ctx_neg"):
        if key not in state:
            raise ValueError(f"no {key} (the official prompt learner has ctx_pos, ctx_neg, compound_prompts_text.<i>)")
        value = state[key]
        if value.dim() < 2 or math.prod(value.shape[:-2]) != 1:
            raise ValueError(f"{key} has shape {tuple(value.shape)}; the official one is (1, 1, n_ctx, width)")
        ctx.append(value.reshape(value.shape[-2:]))
    found = sorted(int(k.split(".")[1]) for k in state if k.startswith("compound_prompts_text."))
    if not found or found != list(range(len(found))):
        raise ValueError(f"compound_prompts_text.<i> must be numbered 0..n-1, found {found or 'none'}")
    return {"ctx": torch.stack(ctx), "deep": torch.stack([state[f"compound_prompts_text.{i}"] for i in found])}


def _official(obj: dict) -> tuple[dict[str, torch.Tensor], dict[str, object]] | None:
    """The official file (or a bare prompt learner state dict) under our names; None when ``obj`` is neither."""
    if OFFICIAL_KEY not in obj and "ctx_pos" not in obj:
        return None
    return official_to_bench(dict(obj.get(OFFICIAL_KEY, obj))), {"kind": "official"}


def load_prompts(path: Path, prompts: ObjectAgnosticPrompts) -> dict[str, object]:
    """Load a checkpoint (official or ours) into ``prompts``; any misfit is a ``WeightsError`` naming the file."""
    obj = load_checkpoint(path, "AnomalyCLIP", "prompts")
    try:
        state, source = learned_state(obj, FORMAT, FORMAT_VERSION, None, _official, "an AnomalyCLIP prompt checkpoint",
                                      f"{{'{OFFICIAL_KEY}': state_dict}}")
        for key, param in prompts.state_dict().items():
            got = tuple(state[key].shape)
            if got != tuple(param.shape):
                raise ValueError(
                    f"{key} has shape {got}, this method needs {tuple(param.shape)} (ctx: 2 x prompt_length x "
                    f"text width; deep: (deep_depth - 1) x deep_length x text width); the file was made for "
                    f"another backbone or other prompt settings"
                )
        prompts.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"AnomalyCLIP prompts {path}: {exc}") from None
    return source

