"""VCP-CLIP's checkpoints: the official release (key mapping in the package docstring) and bench's own."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bench.errors import WeightsError
from bench.methods._clip.adapters import linear_layers_from_official
from bench.methods._learned import learned_state, load_checkpoint
from bench.methods.vcpclip.model import VCPParameters

FORMAT = "bench.vcpclip"
FORMAT_VERSION = 1
OFFICIAL_PARTS = ("trainable_linearlayer", "New_Lan_Embed", "Zero_try")


def official_to_bench(checkpoint: dict, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """An official checkpoint (see the module docstring) → our state dict. ValueError if it does not fit."""
    linears = linear_layers_from_official(dict(checkpoint["trainable_linearlayer"]), layers)
    state = {f"adapters.{k}": v for k, v in linears.items()}
    pre = dict(checkpoint["New_Lan_Embed"])
    state.update({"pre.query": pre["prompt_query"], "pre.conv.weight": pre["prompt_linear1.fc.weight"],
                  "pre.conv.bias": pre["prompt_linear1.fc.bias"], "pre.log_scale": pre["prompt_temp"]})
    post = dict(checkpoint["Zero_try"])
    for official, ours in (("q_proj_pre", "q"), ("k_proj_pre_1", "k"), ("v_proj_pre_1", "v"), ("proj_post_t", "out")):
        state[f"post.{ours}.weight"] = post[f"{official}.weight"].squeeze(-1)
        state[f"post.{ours}.bias"] = post[f"{official}.bias"]
    state["post.log_scale"] = post["prompt_temp_l1"]
    state.update({"prompts.shallow": checkpoint["prompt_embeddings"], "prompts.deep": checkpoint["deep_prompt_embeddings"]})
    for part in ("proj", "norm"):
        for kind in ("weight", "bias"):
            state[f"prompts.{part}.{kind}"] = checkpoint[f"prompt_{part}.{kind}"]
    return state


def _load_state(params: VCPParameters, state: dict[str, torch.Tensor]) -> None:
    """Strict load with one clear ValueError for a missing, unexpected or mis-shaped entry."""
    expected = params.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    if unexpected:
        raise ValueError(f"unexpected entries {', '.join(unexpected)}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{key} has shape {tuple(state[key].shape)}, the backbone needs {tuple(value.shape)}; "
                f"the checkpoint was made for another backbone or layers"
            )
    params.load_state_dict({k: torch.as_tensor(v).float() for k, v in state.items()})


def _official(obj: dict, layers: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, object]] | None:
    """The official file under our names; None when ``obj`` lacks one of its parts."""
    if not all(part in obj for part in OFFICIAL_PARTS):
        return None
    return official_to_bench(obj, layers), {"kind": "official"}


def load_vcp(path: str | Path, params: VCPParameters) -> dict[str, object]:
    """Load an official or a bench checkpoint into ``params``; returns ``{"kind": "official" | "bench", ...}``.

    Anything missing, unreadable or not fitting is a ``WeightsError`` naming the file.
    """
    path = Path(path).expanduser()
    obj = load_checkpoint(path, "VCP-CLIP", "checkpoint")
    try:
        state, source = learned_state(obj, FORMAT, FORMAT_VERSION, params.layers, lambda d: _official(d, params.layers),
                                      "a VCP-CLIP checkpoint", f"{{{', '.join(OFFICIAL_PARTS)}, prompt_*}}")
        _load_state(params, state)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
        raise WeightsError(f"VCP-CLIP checkpoint {path}: {reason}") from None
    return source

