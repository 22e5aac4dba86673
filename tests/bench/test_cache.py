"""Feature cache (bench/cache.py) and the Runner's backbone reuse: keys, hits, corruption."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from bench import plan, runner
from bench.cache import CACHE_VERSION, FeatureCache, backbone_fingerprint, encode
from bench.config import RunConfig
from bench.records import Sample
from fakes import BrightnessMethod, TinyBackbone

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingBackbone(TinyBackbone):
    """The fake backbone, counting the images that go through ``features``."""

    def __init__(self, **options):
        self.options = options
        self.input_size = options.get("input_size", 32)
        self.forwards = 0

    def features(self, x):
        self.forwards += len(x)
        return super().features(x)


def _pixels(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _samples(tmp_path, n: int = 6) -> list[Sample]:
    from PIL import Image

    out = []
    for i, pixels in enumerate(_pixels(n, size=40)):
        path = tmp_path / "good" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        out.append(Sample(path=path, label=0, defect="good", category="cat"))
    return out


def test_second_build_does_zero_forwards_and_gives_the_same_features(tmp_path):
    samples = _samples(tmp_path)
    backbone = CountingBackbone()
    first = runner.build_stream(samples, backbone, batch_size=4, progress=False, cache=FeatureCache(tmp_path / "cache", backbone))
    assert backbone.forwards == 6
    again = CountingBackbone()
    cache = FeatureCache(tmp_path / "cache", again)
    second = runner.build_stream(samples, again, batch_size=4, progress=False, cache=cache)
    assert again.forwards == 0 and (cache.hits, cache.misses) == (6, 0)
    assert torch.equal(first.features.layers["pool4"], second.features.layers["pool4"])  # bit-identical
    assert torch.equal(first.features.embedding, second.features.embedding)
    assert torch.equal(first.images, second.images) and np.array_equal(first.pixels, second.pixels)
    uncached = runner.build_stream(samples, CountingBackbone(), batch_size=4, progress=False)
    assert torch.equal(uncached.features.layers["pool4"], first.features.layers["pool4"])
    assert second.features.keys == [s.key for s in samples] and second.features.category == "cat"


def test_only_new_images_are_encoded(tmp_path):
    backbone = CountingBackbone()
    cache = FeatureCache(tmp_path, backbone)
    pixels = _pixels(5)
    encode(backbone, pixels[:3], 2, cache)
    assert backbone.forwards == 3
    _, features = encode(backbone, pixels, 2, cache)
    assert backbone.forwards == 5 and len(features) == 5
    _, direct = encode(CountingBackbone(), pixels, 2, None)
    assert torch.equal(features.layers["pool4"], direct.layers["pool4"])


def test_a_changed_option_changes_the_key(tmp_path):
    image = _pixels(1)[0]
    base = FeatureCache(tmp_path, TinyBackbone())
    key = base.key(image)
    assert key == FeatureCache(tmp_path, TinyBackbone()).key(image) and len(key) == 64
    assert base.key(image.copy()) == key  # content, not identity
    other_pixels = image.copy()
    other_pixels[0, 0, 0] ^= 1
    assert base.key(other_pixels) != key

    class Variant(TinyBackbone):
        def __init__(self, **attrs):
            self.__dict__.update(attrs)

    variants = [
        Variant(input_size=64),
        Variant(layers=("other",)),
        Variant(weights="random"),
        Variant(precision="bf16"),
        Variant(name="tiny2"),
        Variant(resample="bicubic"),
    ]
    keys = {FeatureCache(tmp_path, v).key(image) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_a_weights_file_is_identified_by_its_content(tmp_path):
    class FileBacked(TinyBackbone):
        def __init__(self, path):
            self.weights = str(path)
            self.weights_path = path

    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights one")  # same content, another name
    c.write_bytes(b"weights two")
    image = _pixels(1)[0]
    key = {p: FeatureCache(tmp_path, FileBacked(p)).key(image) for p in (a, b, c)}
    assert key[a] == key[b] != key[c]
    assert "weights_sha256" in backbone_fingerprint(FileBacked(a))


def test_the_version_is_part_of_the_key(tmp_path, monkeypatch):
    image = _pixels(1)[0]
    key = FeatureCache(tmp_path, TinyBackbone()).key(image)
    from bench import cache as cache_module

    monkeypatch.setattr(cache_module, "CACHE_VERSION", CACHE_VERSION + 1)
    assert FeatureCache(tmp_path, TinyBackbone()).key(image) != key


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_a_corrupt_file_is_recomputed_with_a_warning(tmp_path, damage):
    backbone = CountingBackbone()
    cache = FeatureCache(tmp_path, backbone)
    pixels = _pixels(3)
    _, first = encode(backbone, pixels, 8, cache)
    path = cache.path(cache.key(pixels[1]))
    if damage == "garbage":
        path.write_bytes(b"\x00not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:
        torch.save({"version": CACHE_VERSION, "layers": {"other": torch.zeros(3, 8, 8)}, "embedding": torch.zeros(3)}, path)
    with pytest.warns(UserWarning, match="unusable.*recomputing"):
        _, again = encode(backbone, pixels, 8, cache)
    assert backbone.forwards == 4  # only the damaged one
    assert torch.equal(again.layers["pool4"], first.layers["pool4"])
    assert cache.load(cache.key(pixels[1])) is not None  # rewritten


def test_no_temporary_files_are_left(tmp_path):
    backbone = CountingBackbone()
    cache = FeatureCache(tmp_path, backbone)
    encode(backbone, _pixels(4), 2, cache)
    files = list((tmp_path / "features").rglob("*"))
    assert [f for f in files if f.is_file() and not f.name.endswith(".pt")] == []
    assert len([f for f in files if f.suffix == ".pt"]) == 4


# --------------------------------------------------------------------------- the Runner


@pytest.fixture
def fake_registry(monkeypatch):
    """The Runner's registries answer with fakes: a counting backbone and a recording method."""
    created: list[CountingBackbone] = []

    class Recording(BrightnessMethod):
        bound: ClassVar[list] = []

        def backbone_options(self, backbone):
            return {"input_size": 32}

        def bind(self, backbone):
            Recording.bound.append(backbone)

    def create_backbone(name, **kwargs):
        created.append(CountingBackbone(**kwargs))
        return created[-1]

    monkeypatch.setattr(plan.BACKBONES, "create", create_backbone)
    monkeypatch.setattr(plan.METHODS, "create", lambda name, **kw: Recording())
    Recording.bound = []
    return created, Recording


def test_backbones_are_shared_by_name_and_options(tmp_path, fake_registry):
    created, _ = fake_registry
    backbones = plan.Backbones(RunConfig(out=tmp_path, weights="random"))
    first = backbones.get("vit", {"input_size": 64, "layers": ("block6", "block12")})
    assert backbones.get("vit", {"layers": ["block6", "block12"], "input_size": 64}) is first
    assert backbones.get("vit", {"input_size": 32}) is not first
    assert backbones.get("vit") is not first and len(created) == 3
    assert created[0].options == {"input_size": 64, "layers": ("block6", "block12"), "device": "cpu", "weights": "random"}


def test_a_second_run_does_zero_backbone_forwards(tmp_path, fake_registry):
    from bench.datasets.synthetic import generate

    created, recording = fake_registry
    root = generate(tmp_path / "syn", seed=0, categories=["tile"], n_test=10, size=40, progress=False)
    config = RunConfig(data_root=root, out=tmp_path / "out", methods="musc", refiners="none", figures=0)
    config.pgt.n_groups = 2
    runner.Runner(config, progress=False).run()
    assert len(created) == 1 and created[0].forwards == 10
    # the method is created and bound once, in the run's plan, to the backbone it scores
    assert recording.bound == [created[0]]
    runner.Runner(config, progress=False).run()
    assert len(created) == 2 and created[1].forwards == 0
    config.cache = False
    runner.Runner(config, progress=False).run()
    assert created[2].forwards == 10
