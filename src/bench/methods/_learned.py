"""The machinery every method with learned parts shares (APRIL-GAN, AnomalyCLIP, VCP-CLIP, AdaCLIP).

Their parameters (adapters, prompts) are trained once on an auxiliary dataset and loaded from a
checkpoint. Everything that is not the network, its official-checkpoint mapping or its loss lives
here, once, as ``refiners/_trainable.py`` does for the refiner decoders:

- the ``checkpoint`` option → a source (:func:`learned_source`: a file, ``"untrained"``, or None,
  allowed only on a random-weights backbone) → the module built under ``init_seed`` (in a forked
  RNG) and loaded → the provenance (where the parameters came from, on which backbone) and the
  method's settings → the bound state (:class:`LearnedMethod.bind`);
- bench's own checkpoint format (:func:`save_learned`, :func:`is_bench_checkpoint`) and the
  bookkeeping after training in this process (:meth:`LearnedMethod.record_training`).

A method subclasses :class:`LearnedMethod` and supplies ``build`` (check the backbone, return the
fresh ``nn.Module``) and ``load`` (a checkpoint file into it), and optionally ``on_bind``,
``bound_settings`` and ``checkpoint_fields``. Not a registered plugin (leading underscore).
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone, Method, MethodInfo

UNTRAINED = "untrained"


def learned_source(
    spec: str | Path | None, backbone: Backbone, method: str, option: str, help_text: str
) -> Path | None:
    """Where a method's learned parameters come from: a checkpoint file, or None for fresh ones.

    ``spec``: a file path, ``"untrained"`` (fresh parameters, meaningless maps: tests and smoke
    runs), or None. None is allowed only on a backbone with random weights (the user asked for a
    random smoke run with ``--weights random``); otherwise it is a ``WeightsError`` that says how
    to get the parameters (``help_text``). A path that is not a file is a ``WeightsError`` naming it.
    """
    if spec is None or str(spec).strip() == "":
        if str(getattr(backbone, "weights", "")) == "random":
            return None
        raise WeightsError(
            f"{method} needs its trained {option}: --set method_options.{method}.{option}=PATH. {help_text} "
            f"({option}=untrained gives fresh parameters: meaningless maps, for tests and smoke runs only; "
            f"with --weights random they are untrained by default.)"
        )
    if str(spec) == UNTRAINED:
        return None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"{method} {option} {path}: file not found. {help_text}")
    return path.resolve()


def load_checkpoint(path: Path, method: str, option: str) -> object:
    """``torch.load`` (weights only) of a method's checkpoint; unreadable files are WeightsErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / zip / torch errors of many types
        raise WeightsError(f"{method} {option} {path}: cannot be read by torch.load ({exc})") from None


def is_bench_checkpoint(obj: object, fmt: str, version: int, layers: Sequence[str] | None = None) -> bool:
    """Whether a loaded checkpoint is in bench's format ``fmt``. ValueError when it is, but of another
    ``version`` or (given ``layers``) trained on other layers."""
    if not (isinstance(obj, dict) and obj.get("format") == fmt):
        return False
    if int(obj.get("version", 0)) != version:
        raise ValueError(f"format version {obj.get('version')} (this bench reads {version})")
    saved = tuple(obj.get("layers", ()))
    if layers is not None and set(saved) != set(layers):
        raise ValueError(f"trained on layers {', '.join(saved)}, the backbone taps {', '.join(layers)}")
    return True


def learned_state(
    obj: object, fmt: str, version: int, layers: Sequence[str] | None,
    official: Callable[[dict], tuple[dict[str, torch.Tensor], dict[str, object]] | None], what: str, official_form: str,
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The state dict in a loaded checkpoint and what the file is: bench's format ``fmt`` (source
    ``{"kind": "bench", "meta"}``), else what ``official`` reads from a dict (None: not an official file).
    Anything else is a ValueError: not ``what``, the ``official_form`` expected, what was found."""
    if is_bench_checkpoint(obj, fmt, version, layers):
        return dict(obj["state_dict"]), {"kind": "bench", "meta": dict(obj.get("meta", {}))}  # type: ignore[index]
    read = official(obj) if isinstance(obj, dict) else None
    if read is None:
        found = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"not {what} (expected the official {official_form} or a file saved by bench (method.save); "
                         f"found {found})")
    return read


def save_learned(path: str | Path, fmt: str, version: int, state: Mapping[str, torch.Tensor],
                 meta: Mapping[str, object], **fields: object) -> Path:
    """Write learned parameters in bench's format (``torch.save`` of ``{"format", "version", **fields,
    "state_dict" (CPU copies), "meta"}``); returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu().clone() for k, v in state.items()}
    torch.save({"format": fmt, "version": version, **fields, "state_dict": state_dict, "meta": dict(meta)}, path)
    return path


class LearnedMethod(Method):
    """A method whose learned parameters come from its ``checkpoint`` option (module docstring).

    checkpoint: a file (the official release or one saved by ``save``), ``"untrained"`` (fresh
    parameters: meaningless maps, tests and smoke runs only), or None (allowed only with random
    backbone weights). init_seed: seed of the fresh parameters. ``score`` returns maps on the patch
    grid (what refiners consume) and the official evaluation map at the input size (``evaluated``).
    """

    name: ClassVar[str]  # registry name, e.g. "aprilgan"
    checkpoint_help: ClassVar[str]  # how to get the parameters (the official release, or ``train``)
    checkpoint_format: ClassVar[str]  # bench's own file format, e.g. "bench.aprilgan.adapters"
    checkpoint_version: ClassVar[int] = 1

    def __init__(self, checkpoint: str | Path | None, init_seed: int,
                 settings: Mapping[str, object], **info: object) -> None:
        """``settings`` and ``info`` (paper, arxiv, default_backbone, ...) complete the ``MethodInfo``."""
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.init_seed = int(init_seed)
        self.learned: nn.Module | None = None
        self.layers: tuple[str, ...] = ()
        self.provenance: dict[str, object] = {}
        self.backbone: Backbone | None = None
        self.device = torch.device("cpu")
        self.info = MethodInfo(
            name=self.name,
            needs_auxiliary_training=True,
            settings={"checkpoint": self.checkpoint or "required (untrained with --weights random)", **settings,
                      "init_seed": self.init_seed},
            **info,
        )

    # -- what a subclass supplies
    @abstractmethod
    def build(self, backbone: Backbone) -> nn.Module:
        """Check ``backbone`` (a ConfigError when the method cannot use it), set ``self.layers`` and
        return the fresh learned module (called under ``torch.manual_seed(init_seed)``)."""

    @abstractmethod
    def load(self, path: Path, module: nn.Module) -> dict[str, object]:
        """Load checkpoint ``path`` into ``module``; returns ``{"kind": "official" | "bench", ...}``
        (bench files add ``"meta"``). Anything that does not fit is a ``WeightsError`` naming the file."""

    def on_bind(self, backbone: Backbone) -> None:
        """After the parameters are in place: what else depends on the backbone (token ids, caches)."""

    def bound_settings(self, source: Mapping[str, object]) -> dict[str, object]:
        """Settings only known once bound (besides checkpoint, its source and the layers)."""
        return {}

    def checkpoint_fields(self) -> dict[str, object]:
        """Top-level fields of a bench checkpoint besides ``layers`` (e.g. the prompt shape)."""
        return {}

    def state_to_save(self) -> dict[str, torch.Tensor]:
        """What ``save`` writes: the learned module's state dict."""
        return self.require_bound().state_dict()

    # -- the shared life cycle
    def bind(self, backbone: Backbone) -> None:
        """Build the learned module for ``backbone``, load the checkpoint (or keep it fresh), record where
        it came from."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            module = self.build(backbone)
        path = learned_source(self.checkpoint, backbone, self.name, "checkpoint", self.checkpoint_help)
        source = self.load(path, module) if path is not None else {"kind": UNTRAINED, "init_seed": self.init_seed}
        self.device = torch.device(getattr(backbone, "device", "cpu"))
        self.learned = module.to(self.device).eval().requires_grad_(False)
        self.backbone = backbone
        kind = str(source["kind"])
        self.provenance = {"source": kind, "backbone": getattr(backbone, "name", type(backbone).__name__),
                           "weights": str(getattr(backbone, "weights", "")), "input_size": int(backbone.input_size),
                           "layers": list(self.layers)}
        settings: dict[str, object] = {"checkpoint": str(path) if path is not None else UNTRAINED,
                                       "checkpoint_source": kind, "learned_layers": list(self.layers)}
        if kind == "bench":  # what the file says about how it was made
            saved = dict(source.get("meta", {}))
            self.provenance["trained"] = settings["trained"] = dict(saved.get("trained", {}))
            self.provenance["saved_with"] = settings["saved_with"] = {
                k: saved.get(k) for k in ("backbone", "weights", "input_size", "layers")}
        self.info.settings.update(settings, **self.bound_settings(source))
        self.on_bind(backbone)

    def input_files(self) -> list[Path]:
        """The checkpoint file the bound parameters came from (none when untrained): a checkpoint
        replaced under an unfinished run makes a new run, not a resume (``bench.resume``)."""
        path = self.info.settings.get("checkpoint")
        return [Path(str(path))] if path and path != UNTRAINED else []

    def require_bound(self) -> nn.Module:
        """The learned module; a ConfigError before ``bind``."""
        if self.learned is None or self.backbone is None:
            raise ConfigError(f"{self.name}: call bind(backbone) before scoring (the Runner does it)")
        return self.learned

    def bound_to(self, backbone: Backbone) -> nn.Module:
        """The learned module, bound to ``backbone`` first when it is not already (training starts here)."""
        if self.backbone is not backbone:
            self.bind(backbone)
        return self.require_bound()

    def save(self, path: str | Path, meta: Mapping[str, object] | None = None) -> Path:
        """Save the bound method's parameters in bench's format (loadable with ``checkpoint=PATH``)."""
        saved = {**{k: v for k, v in self.provenance.items() if k != "source"}, **(meta or {})}
        return save_learned(path, self.checkpoint_format, self.checkpoint_version, self.state_to_save(), saved,
                            layers=list(self.layers), **self.checkpoint_fields())

    def record_training(self, trained: Mapping[str, object], save: str | Path | None) -> Path | None:
        """After training in this process: provenance and settings say so; ``save`` writes the result."""
        self.provenance = {**self.provenance, "source": "bench", "trained": dict(trained)}
        self.info.settings.update(checkpoint_source="trained in this process", trained=dict(trained))
        return None if save is None else self.save(save)
