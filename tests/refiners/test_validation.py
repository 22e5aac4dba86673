"""PGT self-validation (bench/refiners/_validation.py, option ``validation_fraction``), for every decoder alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.records import RefineBatch
from bench.refiners import _validation
from refiner_inputs import CNN_LIKE, SMALL, make_batch, make_refiner

DECODERS = ["ard", "destseg", "realnet"]


def group(n: int = 8, anomalous: int = 6) -> RefineBatch:
    """``n`` images, the first ``anomalous`` with a square mask; the coarse map is that mask at grid scale."""
    layers, grid, size = CNN_LIKE
    batch = make_batch(n, size, layers, grid)
    batch.masks[anomalous:] = 0
    batch.coarse = F.avg_pool2d(batch.masks[:, None], size // grid)[:, 0]  # as good as a coarse map gets
    return batch


def state(refiner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in refiner.net.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_images_are_anomalous_seeded_and_leave_some_for_training():
    masks = torch.zeros(10, 4, 4)
    masks[[1, 3, 4, 6, 8, 9], 1, 1] = 1
    train, held = _validation.split_held_out(masks, 0.5, np.random.default_rng([0, 0]))
    assert len(held) == 3 and set(held) <= {1, 3, 4, 6, 8, 9}
    assert sorted([*train, *held]) == list(range(10))
    again = _validation.split_held_out(masks, 0.5, np.random.default_rng([0, 0]))[1]
    assert list(again) == list(held)
    assert len(_validation.split_held_out(masks, 0.01, np.random.default_rng(0))[1]) == 1  # at least one
    assert len(_validation.split_held_out(masks, 0.99, np.random.default_rng(0))[1]) == 5  # one left to train
    one = torch.zeros(3, 4, 4)
    one[0, 0, 0] = 1
    assert len(_validation.split_held_out(one, 0.5, np.random.default_rng(0))[1]) == 0  # nothing to hold out


def test_off_by_default():
    layers, _, size = CNN_LIKE
    ref = make_refiner("ard", layers, size, steps=1, **SMALL["ard"])
    assert ref.opts.validation_fraction == 0
    ref.fit(group())
    assert ref.validations == [] and not ref.use_coarse


@pytest.mark.parametrize("name", DECODERS)
def test_an_update_that_loses_to_the_coarse_map_is_undone(name):
    layers, _, size = CNN_LIKE
    batch = group()
    ref = make_refiner(name, layers, size, steps=2, batch_size=4, validation_fraction=0.5, **SMALL.get(name, {}))
    initial = state(ref)
    assert len(ref.fit(batch)) == 2
    (record,) = ref.validations
    assert record["n_held_out"] == 3 and record["accepted"] == 0.0
    assert record["ap_coarse"] > record["ap_refined"]
    assert same(initial, state(ref)) and ref.use_coarse and ref.stored_normalisation is None
    out = ref.refine(batch.images, batch.features, batch.coarse)
    expected = make_refiner("none", layers, size).refine(batch.images, batch.features, batch.coarse)
    assert torch.equal(out, expected)


def test_a_kept_update_is_used_and_a_later_loss_returns_to_it(monkeypatch):
    layers, _, size = CNN_LIKE
    batch = group()
    ref = make_refiner("ard", layers, size, steps=2, batch_size=4, validation_fraction=0.5, **SMALL["ard"])
    verdicts = iter([0.9, 0.5, 0.1, 0.5])  # fit 1: refined 0.9 vs coarse 0.5 (kept); fit 2: 0.1 vs 0.5 (undone)
    monkeypatch.setattr(_validation, "pixel_ap", lambda maps, masks: next(verdicts))
    ref.fit(batch)
    kept = state(ref)
    assert not ref.use_coarse and ref.validations[0]["accepted"] == 1.0
    ref.fit(batch)
    assert same(kept, state(ref)) and not ref.use_coarse and ref.validations[1]["accepted"] == 0.0
    assert {int(s["step"]) for s in ref.optimizer.state.values()} == {2}  # the optimiser state came back too
    upsampled = make_refiner("none", layers, size).refine(batch.images, batch.features, batch.coarse)
    assert not torch.equal(ref.refine(batch.images, batch.features, batch.coarse), upsampled)


def test_every_decoder_holds_out_the_same_images():
    layers, _, size = CNN_LIKE
    batch = group()
    held = set()
    for name in DECODERS:
        ref = make_refiner(name, layers, size, steps=1, validation_fraction=0.5, **SMALL.get(name, {}))
        seen = []
        refine = ref.refine
        ref.refine = lambda images, features, coarse: seen.append(images[:, 0, 0, 0].tolist()) or refine(images, features, coarse)
        ref.fit(batch)
        held.add(str(seen))
    assert len(held) == 1


def test_fraction_out_of_range_is_rejected():
    layers, _, size = CNN_LIKE
    with pytest.raises(ValueError, match="validation_fraction"):
        make_refiner("destseg", layers, size, validation_fraction=1.0)
