"""One generic registry (timm-style ``register`` / ``create`` / ``list``) for every pluggable part.

Methods, refiners, datasets and backbones are each one file that registers itself with a
decorator; the core only ever looks them up by name, so it never special-cases one.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from bench.errors import BenchError

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


class Registry(Generic[T]):
    """Name → factory, with a one-line description for ``bench list``."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self._package = package
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, description: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            summary = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
            self._entries[name] = Entry(name, factory, summary)
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
        return self.entry(name).factory(**kwargs)

    def resolve(self, spec: str) -> list[str]:
        """``"all"`` or a comma-separated list → validated names, in the given order."""
        if spec.strip() == "all":
            return self.names()
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise UnknownNameError(f"no {self.kind} given. Known: {', '.join(self.names())}.")
        for name in names:
            self.entry(name)
        return names


METHODS: Registry = Registry("method", "bench.methods")
REFINERS: Registry = Registry("refiner", "bench.refiners")
DATASETS: Registry = Registry("dataset", "bench.datasets")
BACKBONES: Registry = Registry("backbone", "bench.backbones")
