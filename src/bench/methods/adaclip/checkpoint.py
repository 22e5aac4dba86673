"""AdaCLIP's checkpoints: the official trainer's state dict (keys ``clip_model.<part>.*``, ``OFFICIAL_KEYS``)
and bench's own, read into one state dict under our names (``visual.*`` for the backbone extra,
``text.*``, ``patch.<i>.*``, ``image.*`` for the method's ``Head``)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from bench.errors import WeightsError
from bench.methods._learned import is_bench_checkpoint, load_checkpoint
from bench.methods.adaclip.model import OFFICIAL_DEPTH, OFFICIAL_LENGTH

FORMAT = "bench.adaclip.prompts"
FORMAT_VERSION = 1
OFFICIAL_PREFIX = "clip_model."  # the trainer's state_dict wraps the AdaCLIP module
# Official key prefix → ours. ``patch.<i>`` is the i-th tapped layer in increasing depth.
OFFICIAL_KEYS = {
    "visual_prompter.static_prompts.": "visual.static.",
    "dynamic_visual_prompt_generator.head.": "visual.generator.",
    "text_prompter.static_prompts.": "text.static.",
    "dynamic_text_prompt_generator.head.": "text.generator.",
    "patch_token_layer.head.": "patch.",
    "cls_token_layer.head.0.": "image.",
}
CHECKPOINT_HELP = (
    "Two ways: (1) an official checkpoint of caoyunkang/AdaCLIP (pretrained_visa_clinicdb.pth, trained on "
    "VisA + ClinicDB, to test on MVTec AD; pretrained_mvtec_colondb.pth, trained on MVTec AD + ColonDB, to "
    "test on VisA; for ViT-L-14-336 with openai weights at 518 px), or (2) prompts trained on the auxiliary "
    "dataset with bench.methods.adaclip.train.train(method, backbone, dataset, save=PATH)."
)



def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """All learned AdaCLIP parameters of a file under our key names, and what the file is.

    Our names: ``visual.*`` (the visual extra's ``HybridPrompts``), ``text.*``, ``patch.<i>.*`` and
    ``image.*`` (the method's). The official file (``AdaCLIP_Trainer.save``) has the keys of
    ``OFFICIAL_KEYS`` under ``clip_model.``; a bare AdaCLIP state dict without that prefix is
    accepted too. Anything else is a ``WeightsError`` naming the file.
    """
    obj = load_checkpoint(path, "AdaCLIP", "checkpoint")
    try:
        ours = is_bench_checkpoint(obj, FORMAT, FORMAT_VERSION)
    except ValueError as exc:
        raise WeightsError(f"AdaCLIP checkpoint {path}: {exc}") from None
    if ours:
        return dict(obj["state_dict"]), {"kind": "bench", "layers": list(obj.get("layers", [])),
                                         "meta": dict(obj.get("meta", {}))}
    state: dict[str, torch.Tensor] = {}
    for key, value in (obj.items() if isinstance(obj, dict) else ()):
        name = str(key).removeprefix(OFFICIAL_PREFIX)
        prefix = next((p for p in OFFICIAL_KEYS if name.startswith(p)), None)
        if prefix is None or not isinstance(value, torch.Tensor):
            state = {}
            break
        state[OFFICIAL_KEYS[prefix] + name[len(prefix):]] = value
    if not state:
        found = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(
            f"AdaCLIP checkpoint {path}: not an AdaCLIP checkpoint (expected the official trainer's state dict "
            f"with keys clip_model.{{{', '.join(p.rstrip('.') for p in OFFICIAL_KEYS)}}}.* or a file saved by "
            f"bench (method.save); found {found})"
        )
    return state, {"kind": "official"}


def load_part(module: nn.Module, part: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``part`` (keys relative to ``module``) strictly; a mismatch is a ``WeightsError`` naming ``path``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(part))
    unexpected = sorted(set(part) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"AdaCLIP checkpoint {path}: its {what} do not fit this setting (missing {missing[:4] or 'none'}, "
            f"unexpected {unexpected[:4] or 'none'}): it was made for another prompt length, prompting depth or "
            f"number of layers (official: length {OFFICIAL_LENGTH}, depth {OFFICIAL_DEPTH}, 4 layers)"
        )
    for key, value in part.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"AdaCLIP checkpoint {path}: {what} {key} has shape {tuple(value.shape)}, this backbone needs "
                f"{tuple(expected[key].shape)}; the checkpoint was made for another backbone"
            )
    module.load_state_dict({key: value.float() for key, value in part.items()})


def parameters_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters (names and float32 values): identity of prompts trained in-process."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()

