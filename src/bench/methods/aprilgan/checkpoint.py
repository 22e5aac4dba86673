"""APRIL-GAN's checkpoints: the official release (``{"trainable_linearlayer": LinearLayer.state_dict()}``,
keys ``fc.<i>.*`` → ``linears.<layer_i>.*``, the i-th tapped layer in increasing depth) and bench's own."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.errors import WeightsError
from bench.methods._clip.adapters import Adapters, check_adapter_shapes, linear_layers_from_official
from bench.methods._learned import learned_state, load_checkpoint

FORMAT = "bench.aprilgan.adapters"
FORMAT_VERSION = 1
OFFICIAL_KEY = "trainable_linearlayer"


def _official(obj: dict, adapters: Adapters) -> tuple[dict[str, torch.Tensor], dict[str, object]] | None:
    """The official file (or a bare ``fc.*`` state dict) under our names; None when ``obj`` is neither."""
    if not (OFFICIAL_KEY in obj or (obj and all(str(k).startswith("fc.") for k in obj))):
        return None
    raw = obj.get(OFFICIAL_KEY, obj)
    if not isinstance(raw, dict):
        raise ValueError(f"{OFFICIAL_KEY!r} is not a state dict")
    state = linear_layers_from_official(dict(raw), adapters.layers)
    return state, {"kind": "official", "mapping": {f"fc.{i}": name for i, name in enumerate(adapters.layers)}}


def load_adapters(path: str | Path, adapters: Adapters) -> dict[str, object]:
    """Load a checkpoint (official or ours) into ``adapters``; returns a description of it.

    Any file that is missing, unreadable or does not fit is a ``WeightsError`` naming it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"APRIL-GAN adapters {path}: file not found")
    obj = load_checkpoint(path, "APRIL-GAN", "adapters")
    try:
        state, source = learned_state(obj, FORMAT, FORMAT_VERSION, adapters.layers, lambda d: _official(d, adapters),
                                      "an APRIL-GAN adapter checkpoint", f"{{'{OFFICIAL_KEY}': state_dict}}")
        check_adapter_shapes(state, adapters)
        adapters.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"APRIL-GAN adapters {path}: {exc}") from None
    return source
