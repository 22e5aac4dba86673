"""The method catalogue behind ``bench list methods``: each method described from its ``MethodInfo``."""
from __future__ import annotations

from dataclasses import dataclass

from bench.errors import ConfigError
from bench.registry import METHODS


@dataclass
class MethodCard:
    """What `bench list methods` shows of a method: its info at default options."""

    name: str
    paper: str
    default_backbone: str
    training: str
    in_all: bool
    settings: dict[str, object]
    deviations: str


def method_catalog() -> list[MethodCard]:
    """Every registered method described from its ``MethodInfo`` (created with default options).

    A method that cannot be created without options (``external`` needs its maps folder) is shown
    with its registry description and the option it needs.
    """
    cards = []
    for name in METHODS.names():
        entry = METHODS.entry(name)
        try:
            info = METHODS.create(name).info
        except ConfigError as exc:
            cards.append(MethodCard(name, entry.description, "-", "-", entry.in_all, {"needs": str(exc)}, ""))
            continue
        paper = f"{info.paper} (arXiv {info.arxiv})" if info.arxiv else info.paper
        training = "auxiliary dataset" if info.needs_auxiliary_training else "none"
        cards.append(MethodCard(name, paper, info.default_backbone, training, entry.in_all,
                                dict(info.settings), info.deviations))
    return cards
