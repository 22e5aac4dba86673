import pytest

from bench.errors import BenchError
from bench.registry import METHODS, REFINERS, Registry, UnknownNameError


def test_register_create_list_and_descriptions():
    reg = Registry("widget", "bench.refiners")

    @reg.register("a", "the a widget")
    def make_a(x=1):
        return ("a", x)

    @reg.register("b")
    def make_b():
        """The b widget.

        More text."""
        return "b"

    assert "a" in reg.names() and "b" in reg.names()
    assert reg.create("a", x=2) == ("a", 2)
    assert reg.entry("b").description == "The b widget."
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(make_a)


def test_unknown_name_suggests_and_lists():
    with pytest.raises(UnknownNameError, match=r"unknown refiner 'nnone'\. Did you mean 'none'\?") as info:
        REFINERS.entry("nnone")
    assert isinstance(info.value, BenchError) and "Known:" in str(info.value)


def test_resolve_all_and_lists():
    assert REFINERS.resolve("all") == [n for n in REFINERS.names() if REFINERS.entry(n).in_all]  # ard_* variants are named only
    assert {"none", "ard", "destseg", "realnet", "gaussian", "guided"} <= set(REFINERS.resolve("all"))
    assert REFINERS.resolve(" none ") == ["none"]
    with pytest.raises(UnknownNameError):
        METHODS.resolve("musc,nope")
    with pytest.raises(UnknownNameError, match="no method given"):
        METHODS.resolve(",")


def test_entry_points_of_the_group_are_loaded_and_a_broken_one_is_named(monkeypatch):
    from importlib import metadata

    loaded = []

    class Point:
        name, value, dist = "extra", "somewhere:register", None

        def load(self):
            loaded.append(self.name)
            reg.register("from_entry_point")(lambda: "plugin")

    reg = Registry("widget", "bench.refiners", group="bench.widgets")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [Point()] if group == "bench.widgets" else [])
    assert reg.create("from_entry_point") == "plugin" and loaded == ["extra"]

    class Broken(Point):
        def load(self):
            raise ImportError("no module named somewhere")

    broken = Registry("widget", "bench.refiners", group="bench.widgets")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [Broken()])
    with pytest.raises(BenchError, match="plugin entry point 'extra' .somewhere:register. in group 'bench.widgets'"):
        broken.names()
