"""One generic registry (timm-style ``register`` / ``create`` / ``list``) for every pluggable part.

Methods, refiners, datasets and backbones are each one file that registers itself with a
decorator; the core only ever looks them up by name, so it never special-cases one. Plugins from
other distributions register the same way: the registry imports every entry point of its group
(``bench.methods``, ``bench.refiners``, ``bench.datasets``) on first use, and the module an entry
point names registers its factories when imported (docs/design.md, "Plugins").
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import pkgutil
import typing
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from bench.errors import BenchError, ConfigError, OptionTypeError, OptionValueError

T = TypeVar("T")


class UnknownNameError(BenchError, KeyError):
    """A name that is not registered; the message lists the known ones and a close match."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    description: str
    in_all: bool = True  # part of "all" (False: only when named, e.g. `external`, which needs options)

    @property
    def product(self) -> type | None:
        """The class the factory makes: the factory itself when it is a class, else its return
        annotation (None when it has none), so class attributes can be read without building one."""
        if inspect.isclass(self.factory):
            return self.factory
        try:
            made = typing.get_type_hints(self.factory).get("return")
        except Exception:  # an annotation that does not resolve: unknown
            return None
        return made if inspect.isclass(made) else None


class Registry(Generic[T]):
    """Name → factory, with a one-line description for ``bench list``."""

    def __init__(self, kind: str, package: str, group: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._group = group  # entry-point group of plugins from other distributions
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(
        self, name: str, description: str = "", in_all: bool = True
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory. ``in_all=False``: not part of ``resolve("all")``."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            summary = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
            self._entries[name] = Entry(name, factory, summary, in_all)
            return factory

        return decorator

    def _load(self) -> None:
        """Import every module of the plugin package once, so that each registers itself."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self._package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self._package}.{module.name}")
        for point in importlib.metadata.entry_points(group=self._group) if self._group else ():
            try:
                point.load()  # importing the module registers its factories
            except Exception as exc:
                source = f" of {point.dist.name}" if point.dist else ""
                raise BenchError(f"plugin entry point {point.name!r} ({point.value}){source} in group "
                                 f"{self._group!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."
            )
        return self._entries[name]

    def create(self, name: str, **kwargs: object) -> T:
        """``name``'s factory called with ``kwargs``.

        A TypeError or ValueError raised while constructing (an unknown or out-of-range option)
        becomes a ConfigError naming the plugin and where its options are set (still a TypeError /
        ValueError: ``OptionTypeError`` / ``OptionValueError``), so the CLI prints it as one line.
        """
        factory = self.entry(name).factory
        where = f" (set with --set {self.kind}_options.{name}.KEY=VALUE)" if self.kind in ("method", "refiner") else ""
        try:
            return factory(**kwargs)
        except BenchError as exc:
            if type(exc) is ConfigError and where:  # a plugin's own option check: say whose options
                raise ConfigError(f"invalid options for {self.kind} {name!r}: {exc}{where}") from exc
            raise
        except (TypeError, ValueError) as exc:
            error = OptionTypeError if isinstance(exc, TypeError) else OptionValueError
            raise error(f"invalid options for {self.kind} {name!r}: {exc}{where}") from exc

    def resolve(self, spec: str) -> list[str]:
        """``"all"`` or a comma-separated list → validated names, in the given order.

        ``"all"`` is every entry registered with ``in_all=True`` (the others must be named).
        """
        if spec.strip() == "all":
            return [name for name in self.names() if self._entries[name].in_all]
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise UnknownNameError(f"no {self.kind} given. Known: {', '.join(self.names())}.")
        for name in names:
            self.entry(name)
        return names


METHODS: Registry = Registry("method", "bench.methods", "bench.methods")
REFINERS: Registry = Registry("refiner", "bench.refiners", "bench.refiners")
DATASETS: Registry = Registry("dataset", "bench.datasets", "bench.datasets")
BACKBONES: Registry = Registry("backbone", "bench.backbones")
