"""The shared training machinery (refiners/_trainable.py): every decoder sees the same data order."""
from __future__ import annotations

import pytest
import torch

from bench.records import FeatureSet, RefineBatch
from bench.registry import REFINERS

TINY = {
    "ard": dict(stem_channels=8, ar_channels=(8, 8), encoder_channels=(8, 8, 8), stem_anomaly_channels=8),
    "destseg": dict(width=8, res_blocks=1),
    "realnet": dict(widths=(8, 8, 8, 4)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def labelled_group(n: int, offset: int) -> RefineBatch:
    """Image i is filled with the value offset + i, so a mini-batch tells which images it holds."""
    size, grid = 32, 4
    images = (offset + torch.arange(n, dtype=torch.float32))[:, None, None, None].expand(n, 3, size, size).clone()
    feats = FeatureSet({"a": torch.randn(n, 4, grid, grid)}, torch.randn(n, 2))
    return RefineBatch(images, feats, torch.rand(n, grid, grid), torch.zeros(n, size, size))


def drawn_batches(name: str, seed: int, groups: list[RefineBatch]) -> list[list[int]]:
    ref = REFINERS.create(name, channels={"a": 4}, image_size=32, seed=seed, steps=5, batch_size=3, **TINY[name])
    seen: list[list[int]] = []
    forward = ref.forward

    def recording(images, features, coarse_normalised):
        seen.append([int(v) for v in images[:, 0, 0, 0].round()])
        return forward(images, features, coarse_normalised)

    ref.forward = recording  # instance attribute: the shared fit loop calls it
    for group in groups:
        ref.fit(group)
    return seen


def test_same_seed_same_mini_batches_for_every_decoder():
    groups = [labelled_group(7, 0), labelled_group(5, 100)]  # two PGT groups: the order carries over
    orders = {name: drawn_batches(name, 3, groups) for name in ("ard", "destseg", "realnet")}
    assert orders["ard"] == orders["destseg"] == orders["realnet"]
    batches = orders["ard"]
    assert len(batches) == 10 and all(len(b) == 3 for b in batches)
    assert all(v < 100 for b in batches[:5] for v in b) and all(v >= 100 for b in batches[5:] for v in b)
    # without replacement within a pass: the first two batches of group 1 are 6 distinct images
    assert len(set(batches[0] + batches[1])) == 6
    assert drawn_batches("destseg", 4, groups) != batches  # the order follows the seed
