"""The typed run configuration: defaults in code, a YAML file and ``--set key=value`` on top.

Every field is logged as an MLflow parameter, so a run can be reproduced from its parameters and
seed alone.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError
from bench.executors import EXECUTORS
from bench.synth import SynthConfig


@dataclass
class PGTConfig:
    """Progressive group-wise test-time training (docs/design.md, "PGT")."""

    n_groups: int = 4  # the test stream of a category is split into this many groups...
    group_size: int = 0  # ...unless this is > 0: groups of this many images (the last may be smaller)
    pseudo_normal_fraction: float = 0.5  # lowest-scored fraction of a group used as pseudo-normals
    synth_per_group: int = 48  # synthetic anomalous images made from a group's pseudo-normals
    contamination: tuple[float, ...] = (0.0,)  # fractions of pseudo-normals replaced by true anomalies
    warmup: str = "none"  # "none": trained refiners keep group 1's coarse maps; "self": train on group 1, refine it
    reference: str = "all"  # inter-image methods' reference for test maps: "all" test images or "seen" groups
    # final map = (1 - w) * refined + w * the rescaled coarse map (every refiner alike). 0.5: where a
    # decoder misses a defect, the coarse evidence stays instead of falling below normal pixels
    # (issue 15; chosen on a pilot, seed 7, pcb, before the seed 0-2 evaluation; README "Results").
    fuse_coarse: float = 0.5
    synth: SynthConfig = field(default_factory=SynthConfig)  # anomaly synthesis of the training images (bench.synth)


@dataclass
class RunConfig:
    data_root: Path | None = None  # None: the embedded synthetic dataset under <out>/data/synthetic
    dataset: str | None = None  # None: detected from the tree
    categories: str | None = None  # comma list; None: all
    methods: str = "all"
    refiners: str = "ard"  # "all" or a comma list; `none` (the baseline) always runs as well
    backbone: str | None = None  # None: each method's published default
    weights: str = "default"  # backbone weights: "default", a pretrained tag, a file, or "random"
    device: str = "cpu"
    seed: int = 0
    eval_size: int = 0  # evaluation resolution; 0: the backbone's input size
    mask_threshold: float = 0.5  # masks are resized bilinearly and binarised at this value
    batch_size: int = 16  # backbone batch size
    cache: bool = True  # backbone features cached on disk under <out>/cache (bench.cache); False: always recompute
    out: Path = Path("results")
    tracking_uri: str | None = None  # None: sqlite store <out>/mlflow.db
    experiment: str = "bench"
    resume: bool = True  # an unfinished run with the same config in the store is resumed (bench.resume); False: always a new run
    executor: str = "serial"  # where the tasks (category × method) run: "serial", "processes" or "ray" (bench.executors)
    ray_address: str | None = None  # executor "ray": the cluster's address; None: a local cluster for this run
    figures: int = 4  # anomalous samples per category in the figure grid (0: none)
    bootstrap: int = 1000  # paired-bootstrap resamples of each unit's test images for intervals (bench.bootstrap); 0: none
    pgt: PGTConfig = field(default_factory=PGTConfig)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    refiner_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        pgt = self.pgt
        checks = [
            (0 <= self.seed < 2**64, "seed", self.seed, "an integer >= 0 and < 2**64 (torch's seed range)"),
            (self.figures >= 0, "figures", self.figures, "an integer >= 0 (0: no figure)"),
            (isinstance(self.experiment, str) and self.experiment.strip() != "", "experiment", self.experiment,
             "a non-empty experiment name"),
            (pgt.n_groups >= 1, "pgt.n_groups", pgt.n_groups, "an integer >= 1"),
            (pgt.group_size >= 0, "pgt.group_size", pgt.group_size, "0 (use n_groups) or a positive integer"),
            (0 < pgt.pseudo_normal_fraction <= 1, "pgt.pseudo_normal_fraction", pgt.pseudo_normal_fraction, "in (0, 1]"),
            (pgt.synth_per_group >= 1, "pgt.synth_per_group", pgt.synth_per_group, "an integer >= 1"),
            (all(0 <= c <= 1 for c in pgt.contamination), "pgt.contamination", pgt.contamination, "fractions in [0, 1]"),
            (pgt.warmup in ("none", "self"), "pgt.warmup", pgt.warmup, "'none' or 'self'"),
            (pgt.reference in ("all", "seen"), "pgt.reference", pgt.reference, "'all' or 'seen'"),
            (0 <= pgt.fuse_coarse <= 1, "pgt.fuse_coarse", pgt.fuse_coarse, "in [0, 1]"),
            (self.eval_size >= 0, "eval_size", self.eval_size, "0 (backbone input size) or a positive integer"),
            (0 < self.mask_threshold < 1, "mask_threshold", self.mask_threshold, "in (0, 1)"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1"),
            (self.bootstrap == 0 or self.bootstrap >= 100, "bootstrap", self.bootstrap, "0 (no intervals) or >= 100"),
            (isinstance(self.cache, bool), "cache", self.cache, "true or false"),
            (isinstance(self.resume, bool), "resume", self.resume, "true or false"),
            (self.executor in EXECUTORS, "executor", self.executor, " or ".join(map(repr, EXECUTORS))),
            (self.ray_address is None or self.executor == "ray", "ray_address", self.ray_address,
             "left out unless executor='ray'"),
            (self.executor != "ray" or self.device in ("cpu", "cuda"), "device", self.device,
             "'cpu' or 'cuda' with executor='ray' (Ray gives each task its own GPU)"),
            (all(isinstance(v, dict) for v in self.method_options.values()), "method_options", self.method_options,
             "a mapping {method: {option: value}}"),
            (all(isinstance(v, dict) for v in self.refiner_options.values()), "refiner_options", self.refiner_options,
             "a mapping {refiner: {option: value}}"),
            (self.device in ("cpu", "cuda") or self.device.startswith("cuda:"), "device", self.device, "'cpu' or 'cuda[:N]'"),
        ]
        for ok, name, value, valid in checks:
            if not ok:
                raise ConfigError(f"invalid {name}={value!r}: must be {valid}")
        pgt.synth.validate("pgt.synth")
        if self.executor == "ray" and importlib.util.find_spec("ray") is None:
            raise ConfigError("executor='ray' needs Ray, which is not installed: pip install 'anorefiner-bench[ray]'")
        if self.device.startswith("cuda"):
            import torch

            suffix = self.device.partition(":")[2]
            if suffix and not suffix.isdigit():
                raise ConfigError(f"invalid device={self.device!r}: must be 'cpu' or 'cuda[:N]'")
            index = int(suffix or 0)
            if not torch.cuda.is_available():
                raise ConfigError(f"invalid device={self.device!r}: CUDA is not available on this machine "
                                  f"(torch {torch.__version__}); use --device cpu")
            if index >= torch.cuda.device_count():
                raise ConfigError(f"invalid device={self.device!r}: this machine has {torch.cuda.device_count()} "
                                  "CUDA device(s), numbered from 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (lists, strings, numbers, None): what ``to_yaml`` writes."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The config as a YAML file that ``bench run --config`` reads back to the same config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_params(self) -> dict[str, str]:
        """Flat ``{dotted.name: value}`` view, as logged to MLflow: each value in YAML (``[0.0]``,
        ``null``, ``true``), so ``--set name=value`` takes it back as it is."""
        return {k: yaml_value(v) for k, v in _flatten(self.to_dict()).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def yaml_value(value: Any) -> str:
    """One value as inline YAML: ``0.5``, ``[0.0, 0.1]``, ``null``, ``{steps: 2}``."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=2**31).strip()
    return text.removesuffix("...").strip()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_contamination(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.2"`` → ``(0.0, 0.1, 0.2)`` with an error naming the option."""
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"invalid --contamination {text!r}: expected fractions like 0,0.1,0.2") from None
    if not values:
        raise ConfigError("--contamination is empty: expected fractions like 0,0.1,0.2")
    rounded = [round(v, 9) for v in values]  # as runs and resume key their blocks
    repeated = sorted({v for v in rounded if rounded.count(v) > 1})
    if repeated:
        raise ConfigError(f"invalid --contamination {text!r}: {', '.join(map(str, repeated))} given twice; "
                          "each fraction is one block of the sweep")
    return values


# Old spellings of config keys, still accepted with one deprecation line.
ALIASES = {"pgt.texture_dir": "pgt.synth.texture_dir"}


def deprecated(old: str, new: str) -> None:
    """One ``Warning: ... is deprecated`` line (the CLI prints warnings as one line)."""
    warnings.warn(f"{old} is deprecated; use {new}", FutureWarning, stacklevel=3)


def _as_tuple(current: tuple, value: Any, full: str) -> tuple:
    """A tuple option from a YAML list or a comma string, each item of the default's item type."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"invalid {full}={value!r}: expected a list, e.g. {full}={list(current)}")
    kind = type(current[0]) if current else str
    try:
        return tuple(kind(item.strip() if isinstance(item, str) else item) for item in items)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {full}={value!r}: expected a list of {kind.__name__}, e.g. "
                          f"{full}={list(current)}") from None


def _set_path(target: Any, dotted: str, value: Any, full: str = "") -> None:
    full = full or dotted
    head, _, rest = dotted.partition(".")
    if isinstance(target, dict):
        if rest:
            _set_path(target.setdefault(head, {}), rest, value, full)
        else:
            target[head] = value
        return
    if not dataclasses.is_dataclass(target):
        parent = full[: len(full) - len(dotted) - 1]
        raise ConfigError(f"unknown config key {full!r}: {parent} is a value, not a section of options")
    names = {f.name for f in dataclasses.fields(target)}
    if head not in names:
        raise ConfigError(f"unknown config key {full!r}; known: {', '.join(sorted(names))}")
    if rest:
        _set_path(getattr(target, head), rest, value, full)
        return
    current = getattr(target, head)
    if dataclasses.is_dataclass(current) or isinstance(current, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"invalid {full}={value!r}: expected a mapping of option names to values")
        if isinstance(current, dict):
            bad = [k for k, v in value.items() if not isinstance(v, dict)]
            if bad:
                raise ConfigError(f"invalid {full}.{bad[0]}={value[bad[0]]!r}: expected a mapping of option names "
                                  f"to values, e.g. {full}.{bad[0]}.KEY=VALUE")
            setattr(target, head, value)
            return
        for key, item in value.items():
            _set_path(current, str(key), item, f"{full}.{key}")
        return
    if head == "contamination":
        items = value if isinstance(value, (list, tuple)) else [value]  # one number: one fraction
        value = parse_contamination(value if isinstance(value, str) else ",".join(map(str, items)))
    elif isinstance(current, tuple):
        value = _as_tuple(current, value, full)
    elif isinstance(current, Path) or head in ("data_root", "out"):
        value = as_path(value, full, optional=head == "data_root")
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        value = as_number(value, type(current), full)
    elif value is not None and "str" in str(_field_type(target, head)):
        if isinstance(value, (list, tuple)):  # YAML lists for comma-list options: categories: [a, b]
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            raise ConfigError(f"invalid {full}={value!r}: expected a string")
        else:
            value = str(value)
    setattr(target, head, value)


def as_number(value: Any, kind: type, name: str) -> int | float:
    """``value`` as an ``int`` or ``float`` option, never truncated: ``2.5`` or ``true`` for an
    integer option is an error naming ``name``, and so are NaN and infinity for a float option."""
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            pass
    if isinstance(value, str):  # YAML 1.1 reads 1e-1 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok:
        raise ConfigError(f"invalid {name}={value!r}: expected {kind.__name__} ({expected})")
    return kind(value)


def typed_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Plugin ``options`` checked against the annotations of the options dataclass ``cls``: a
    value for an ``int`` / ``float`` / ``bool`` / ``str`` field (optionally ``| None``) must be
    of that type (integers are accepted for floats), so ``steps: many`` is an error naming
    ``steps`` before any work. Fields of other types (tuples, ...) are left to ``cls``."""
    hints = typing.get_type_hints(cls)
    checked = dict(options)
    for name, value in options.items():
        hint = hints.get(name)
        if typing.get_origin(hint) is tuple:  # tuple[int, int] is not an int: left to cls
            continue
        args = set(typing.get_args(hint)) if typing.get_args(hint) else {hint}
        if value is None and type(None) in args:
            continue
        kinds = [k for k in (bool, int, float, str) if k in args]
        if len(args - {type(None)}) != 1 or not kinds:
            continue
        kind = kinds[0]
        if kind in (int, float):
            checked[name] = as_number(value, kind, name)
        elif not isinstance(value, kind):
            raise ConfigError(f"invalid {name}={value!r}: expected {kind.__name__}")
    return checked


def as_path(value: Any, name: str, optional: bool = False) -> Path | None:
    """``value`` as one folder path (a string or a number, e.g. ``out=5``); lists, mappings and
    booleans are an error naming ``name``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Path)) or str(value).strip() == "":
        raise ConfigError(f"invalid {name}={value!r}: expected one folder path")
    if not str(value).isprintable() or _not_utf8(str(value)):
        raise ConfigError(f"invalid {name}={str(value)!r}: the path is not printable UTF-8 text, which the MLflow store "
                          "needs; rename the folder")
    return Path(str(value))


def _not_utf8(text: str) -> bool:
    """A name whose bytes are not UTF-8 (Python holds them as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _field_type(target: Any, name: str) -> Any:
    return next((f.type for f in dataclasses.fields(target) if f.name == name), None)


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set dotted keys (``pgt.n_groups``, ``refiner_options.ard.steps``) on ``config``."""
    for key, value in overrides.items():
        if key in ALIASES:
            deprecated(key, ALIASES[key])
            key = ALIASES[key]
        _set_path(config, key, value)
    return config


def parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """``("pgt.n_groups=3", ...)`` → ``{"pgt.n_groups": 3}``, values parsed as YAML scalars."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"invalid --set {item!r}: expected KEY=VALUE, e.g. pgt.n_groups=3")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid --set {item!r}: the value is not a YAML scalar or list ({_one_line(exc)})") from None
    return parsed


def _one_line(exc: BaseException) -> str:
    """A (YAML) error message on one line, with its position when known."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(getattr(exc, "strerror", None) or exc).split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last value silently)."""

    def construct_mapping(self, node, deep=False):
        own = [(k, v) for k, v in node.value if k.tag != "tag:yaml.org,2002:merge"]  # `<<: *anchor` merges
        keys = [self.construct_object(key, deep=True) for key, _ in own]
        for i, (key, (key_node, _)) in enumerate(zip(keys, own)):
            if key in keys[:i]:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML config file, flattened to dotted keys."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                          f"at offset {exc.start}); save it as UTF-8") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    # option dicts stay nested: they are free-form per method / refiner
    flat = {}
    for key, value in data.items():
        if key in ("pgt",) and isinstance(value, dict):
            flat.update({f"pgt.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat
