"""APRIL-GAN's checkpoints: the official release (``{"trainable_linearlayer": LinearLayer.state_dict()}``,
keys ``fc.<i>.*`` → ``linears.<layer_i>.*``, the i-th tapped layer in increasing depth) and bench's own."""
from __future__ import annotations

from pathlib import Path

from bench.errors import WeightsError
from bench.methods._clip.adapters import Adapters, check_adapter_shapes, linear_layers_from_official
from bench.methods._learned import is_bench_checkpoint, load_checkpoint

FORMAT = "bench.aprilgan.adapters"
FORMAT_VERSION = 1
OFFICIAL_KEY = "trainable_linearlayer"


def load_adapters(path: str | Path, adapters: Adapters) -> dict[str, object]:
    """Load a checkpoint (official or ours) into ``adapters``; returns a description of it.

    Any file that is missing, unreadable or does not fit is a ``WeightsError`` naming it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"APRIL-GAN adapters {path}: file not found")
    obj = load_checkpoint(path, "APRIL-GAN", "adapters")
    try:
        if is_bench_checkpoint(obj, FORMAT, FORMAT_VERSION, adapters.layers):
            state = dict(obj["state_dict"])
            source = {"kind": "bench", "meta": dict(obj.get("meta", {}))}
        elif isinstance(obj, dict) and (OFFICIAL_KEY in obj or (obj and all(str(k).startswith("fc.") for k in obj))):
            raw = obj.get(OFFICIAL_KEY, obj)
            if not isinstance(raw, dict):
                raise ValueError(f"{OFFICIAL_KEY!r} is not a state dict")
            state = linear_layers_from_official(dict(raw), adapters.layers)
            source = {"kind": "official", "mapping": {f"fc.{i}": name for i, name in enumerate(adapters.layers)}}
        else:
            keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(
                f"not an APRIL-GAN adapter checkpoint (expected the official {{'{OFFICIAL_KEY}': "
                f"state_dict}} or a file saved by bench (method.save); found {keys})"
            )
        check_adapter_shapes(state, adapters)
        adapters.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"APRIL-GAN adapters {path}: {exc}") from None
    return source
