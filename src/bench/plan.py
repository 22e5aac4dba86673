"""The run plan: everything a ``bench run`` checks and sets up once, before any work.

``build_plan(config)`` resolves the method and refiner names, creates each method once and binds
it once to its backbone (one backbone per name and options, shared), reads each refiner's class
(``trainable``) from the registry, builds each refiner once per backbone to check its options,
finds the categories and their test-image counts (the embedded default from its fixed recipe,
without writing it) and checks every PGT group size. Any error is a ``BenchError`` raised before
a dataset is written, a feature computed or an MLflow run created (docs/design.md, "The run plan").
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import embedded
from bench.config import RunConfig
from bench.data import choose_categories, open_dataset, select_categories
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone, Dataset, Method, Refiner
from bench.protocol import check_group_sizes, make_groups
from bench.registry import BACKBONES, METHODS, REFINERS, UnknownNameError
from bench.resume import ResumeState


class SkippedMethodWarning(UserWarning):
    """Methods of ``--methods all`` that cannot run with this configuration (named, with a hint)."""


@dataclass(frozen=True)
class Task:
    """What an executor computes at once: one method on one category with every refiner and
    contamination, which share the category's features and the method's coarse maps."""

    category: str
    method: str
    refiners: tuple[str, ...]


def _frozen(value: object) -> object:
    """Hashable form of an options value (dicts, lists and tuples nested)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class Backbones:
    """The backbones of a run: one instance per (name, options), shared by the methods using it."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._made: dict[tuple, Backbone] = {}

    def kwargs(self, options: dict[str, object] | None = None) -> dict[str, object]:
        """Factory options of a backbone: the method's, then the run's ``--weights`` / ``--device``."""
        kwargs = dict(options or {})
        kwargs["device"] = self.config.device
        if self.config.weights != "default":
            kwargs["weights"] = self.config.weights
        return kwargs

    def get(self, name: str, options: dict[str, object] | None = None) -> Backbone:
        """The backbone ``name`` created with ``options``; one instance per (name, options)."""
        kwargs = self.kwargs(options)
        key = (name, _frozen(kwargs))
        if key not in self._made:
            self._made[key] = BACKBONES.create(name, **kwargs)
        return self._made[key]

    def for_method(self, method: Method) -> Backbone:
        """The run's ``--backbone`` or the method's default, with the method's options."""
        name = self.config.backbone or method.info.default_backbone
        return self.get(name, method.backbone_options(name))


@dataclass
class BoundMethod:
    """A method created once for the run and bound once to its backbone."""

    method: Method
    backbone: Backbone


@dataclass
class RunPlan:
    """What a run will compute, fully checked."""

    config: RunConfig
    categories: list[str]
    methods: dict[str, BoundMethod]  # the methods that run, in order
    refiners: tuple[str, ...]  # "none" first
    refiner_classes: dict[str, type[Refiner]]
    dataset: Dataset | None  # None: the embedded default, not written yet (``open_dataset``)
    skipped: dict[str, str] = field(default_factory=dict)  # methods left out of --methods all, and why

    @property
    def trainable(self) -> list[str]:
        return [name for name in self.refiners if self.refiner_classes[name].trainable]

    def open_dataset(self, progress: bool = True) -> Dataset:
        """The run's dataset; the embedded default is written here on first use."""
        if self.dataset is None:
            root = embedded.ensure_embedded(self.config.out, progress)
            self.dataset = open_dataset(root, self.config.dataset)
        return self.dataset

    def tasks(self, state: ResumeState | None = None) -> list[Task]:
        """Every (category, method) task, less those ``state`` holds as finished."""
        contaminations = self.config.pgt.contamination
        return [Task(category, name, self.refiners) for category in self.categories for name in self.methods
                if state is None or not state.method_done(category, name, contaminations, list(self.refiners))]


def bind_methods(names: list[str], config: RunConfig, backbones: Backbones, skip_unusable: bool,
                 refiners: dict[str, type[Refiner]] | None = None) -> tuple[dict[str, BoundMethod], dict[str, str]]:
    """Create and bind each method once: the bound methods, and those skipped (name → why).
    ``refiners``: the run's refiner classes, checked against each method (``check_refiners_fit``).

    ``skip_unusable`` (``--methods all``): a method that cannot get its default weights or its
    checkpoint, or cannot use the backbone, is skipped (e.g. the CLIP methods on the embedded
    default, offline); at least one method must remain. Always errors: bad method options, weights
    the user named with ``--weights`` that do not load, a trainable refiner with a method that can
    only score the dataset's own images, and any problem of a method named in ``--methods``.
    """
    bound: dict[str, BoundMethod] = {}
    skipped: dict[str, str] = {}
    for name in names:
        method = METHODS.create(name, **config.method_options.get(name, {}))
        check_refiners_fit(method, refiners or {})
        backbone = None
        try:
            backbone = backbones.for_method(method)
            method.bind(backbone)
        except (WeightsError, ConfigError) as exc:
            named_weights = backbone is None and isinstance(exc, WeightsError) and config.weights != "default"
            if not skip_unusable or named_weights:
                raise
            skipped[name] = str(exc)
            continue
        bound[name] = BoundMethod(method, backbone)
    if not bound:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise ConfigError(f"--methods all: no method can run with this configuration ({reasons})")
    if skipped:
        warnings.warn(skipped_message(skipped), SkippedMethodWarning, stacklevel=2)
    return bound, skipped


def skipped_message(skipped: dict[str, str]) -> str:
    """One line naming the skipped methods (grouped by the first clause of their reason), one hint."""
    reasons: dict[str, list[str]] = {}
    for name, why in skipped.items():
        reasons.setdefault(why.split(" (")[0].split(". ")[0][:90], []).append(name)
    named = "; ".join(f"{', '.join(names)} ({why})" for why, names in reasons.items())
    first = next(iter(skipped))
    return (f"--methods all: skipped {named}\n"
            f"Hint: name a skipped method (--methods {first}) to see the whole reason and how to fix it")


def check_refiners_fit(method: Method, refiner_classes: dict[str, type[Refiner]]) -> None:
    """A method that scores only the dataset's own images cannot make PGT's training maps."""
    trainable = [name for name, cls in refiner_classes.items() if cls.trainable]
    if trainable and not method.info.scores_unseen_images:
        raise ConfigError(
            f"method {method.info.name!r} can only score the dataset's own test images, so PGT cannot "
            f"make coarse maps for its synthetic training images: the trainable refiner(s) "
            f"{', '.join(trainable)} cannot be used with it. Use training-free refiners "
            f"(e.g. --refiners none,gaussian,guided)."
        )


def refiner_class(name: str) -> type[Refiner]:
    """Refiner ``name``'s class, read from the registry without building one: the one place the run learns
    whether a refiner trains (``Refiner.trainable``). A factory that declares no Refiner class is a ConfigError."""
    cls = REFINERS.entry(name).product
    if cls is None or not issubclass(cls, Refiner):
        raise ConfigError(f"refiner {name!r}: its factory must be a Refiner class or be annotated "
                          "with the Refiner class it returns (-> MyRefiner)")
    return cls


def refiner_classes(names: list[str]) -> dict[str, type[Refiner]]:
    """Each refiner's class (``refiner_class``)."""
    return {name: refiner_class(name) for name in names}


def build_refiners(names: Sequence[str], backbone: Backbone, config: RunConfig) -> dict[str, Refiner]:
    """Fresh refiners for one block (state starts empty, then carries over between its groups)."""
    return {
        name: REFINERS.create(name, channels=backbone.channels, image_size=backbone.input_size, seed=config.seed,
                              device=config.device, **config.refiner_options.get(name, {}))
        for name in names
    }


def check_option_owners(config: RunConfig) -> None:
    """Options given for a method or refiner that is not registered (a typo: ``refiner_options.rad``)
    would be logged with the run but never applied: a ConfigError naming the key."""
    for registry, options, key in ((METHODS, config.method_options, "method_options"),
                                   (REFINERS, config.refiner_options, "refiner_options")):
        for name in options:
            try:
                registry.entry(name)
            except UnknownNameError as exc:
                raise ConfigError(f"{key}.{name}: {exc}") from None


def check_out_outside_data(config: RunConfig) -> None:
    """Results written inside the dataset would be read as part of it by the next run (its store,
    cache and artifacts folders as categories): a ConfigError before anything is written."""
    if config.data_root is None:
        return
    out, root = Path(config.out).resolve(), Path(config.data_root).expanduser().resolve()
    if out == root or root in out.parents:
        raise ConfigError(f"--out {config.out} is inside --data-root {config.data_root}: the results folder would "
                          "become part of the dataset; choose a folder outside it")


def check_refiner_options(names: list[str], backbones: list[Backbone], config: RunConfig) -> None:
    """Build each refiner once per backbone, so that an unknown or ill-typed option is an error now
    (in a forked RNG: the check leaves the random state as it was)."""
    with torch.random.fork_rng(devices=[]):
        for backbone in {id(b): b for b in backbones}.values():
            build_refiners(names, backbone, config)


def category_sizes(config: RunConfig) -> tuple[Dataset | None, dict[str, int]]:
    """The dataset (None: the embedded default, not written yet) and the test-image count of each
    chosen category, read from the tree (scanned, not decoded) or from the embedded recipe."""
    root = config.data_root
    if root is None and (embedded.embedded_root(config.out) / embedded.MARKER).is_file():
        root = embedded.embedded_root(config.out)
    if root is None:
        chosen = choose_categories(sorted(embedded.CATEGORIES), config.categories,  # as the loader lists them
                                   f"the embedded dataset ({embedded.embedded_root(config.out)})")
        return None, {category: embedded.N_TEST for category in chosen}
    dataset = open_dataset(Path(root), config.dataset)
    return dataset, {category: len(dataset.test(category)) for category in select_categories(dataset, config.categories)}


def check_group_sizes_all(sizes: dict[str, int], methods: dict[str, BoundMethod], config: RunConfig,
                          trainable: bool) -> None:
    """PGT groups of every category large enough for every method (``trainable``: a refiner trains)."""
    for category, n in sizes.items():
        try:
            groups = make_groups(n, config.pgt, config.seed)
            for bound in methods.values():
                check_group_sizes(groups, bound.method, trainable, config.pgt.reference)
        except ConfigError as exc:
            raise ConfigError(f"category {category!r} ({n} test images): {exc}") from None


def build_plan(config: RunConfig, methods: list[str] | None = None) -> RunPlan:
    """Check and set up a run (see the module docstring). ``methods``: exactly these (already
    resolved, never skipped: how a Ray worker rebuilds the plan of its run)."""
    config.validate()
    check_option_owners(config)
    check_out_outside_data(config)
    skip = methods is None and config.methods.strip() == "all"
    names = methods if methods is not None else METHODS.resolve(config.methods)
    refiners = ["none"] + [r for r in REFINERS.resolve(config.refiners) if r != "none"]
    classes = refiner_classes(refiners)
    backbones = Backbones(config)
    bound, skipped = bind_methods(names, config, backbones, skip, classes)
    check_refiner_options(refiners, [b.backbone for b in bound.values()], config)
    dataset, sizes = category_sizes(config)
    check_group_sizes_all(sizes, bound, config, any(cls.trainable for cls in classes.values()))
    return RunPlan(config, list(sizes), bound, tuple(refiners), classes, dataset, skipped)
