"""What the CLIP methods with learned parts share (bench/methods/_clip/auxiliary.py): the training loop (one
optimiser step per batch, pinned against gradient descent by hand; the epochs and the max_steps cut;
frozen modules afterwards, also after an error), the argument checks and per-dataset official
settings, and the image labels of auxiliary batches, mosaics included."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.methods._clip import auxiliary as X


@pytest.fixture
def data(synthetic_tiles) -> X.AuxiliaryData:
    return X.AuxiliaryData.open(synthetic_tiles)  # 8 test images of 'tile', normal and anomalous


# --------------------------------------------------------------------------- labels


def test_batches_carry_the_samples_labels(data):
    order = np.random.default_rng(0).permutation(len(data.samples))
    batches = list(data.batches(3, 16, 0.0, np.random.default_rng(0)))
    assert [len(b.images) for b in batches] == [3, 3, 2] and batches[0].masks.shape == (3, 16, 16)
    labels = torch.cat([b.labels for b in batches])
    assert labels.dtype == torch.long and set(labels.tolist()) == {0, 1}
    assert labels.tolist() == [data.samples[i].label for i in order]


def test_a_mosaic_is_anomalous_if_any_of_its_tiles_is(data, monkeypatch):
    read, real = [], X.read_pair

    def recording(sample):
        read.append(sample)
        return real(sample)

    monkeypatch.setattr(X, "read_pair", recording)
    normal = [s for s in data.samples if s.label == 0]
    anomalous = [s for s in data.samples if s.label == 1]
    rng = np.random.default_rng(0)
    assert X.mosaic({"good": normal}, rng)[2] == 0
    mixed = 0
    for _ in range(8):
        read.clear()
        _, _, label = X.mosaic({"good": normal, "defect": anomalous}, rng)
        tiles = [s.label for s in read]
        assert len(tiles) == 4 and label == max(tiles)
        mixed += 0 < sum(tiles) < 4
    assert mixed > 0  # some mosaics mix normal and anomalous tiles: they are anomalous
    # through the batches: every sample replaced by a mosaic, one label per mosaic
    read.clear()
    (batch,) = data.batches(8, 16, 1.0, np.random.default_rng(1))
    assert batch.labels.tolist() == [max(s.label for s in read[4 * i : 4 * i + 4]) for i in range(8)]


# --------------------------------------------------------------------------- the loop


def test_one_optimiser_step_per_batch_then_frozen(data):
    weight = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(weight.weight)
    optimizer = torch.optim.SGD(weight.parameters(), lr=0.1)
    sizes = []

    def step_loss(batch):
        assert weight.training and weight.weight.requires_grad
        sizes.append(len(batch.images))
        return len(batch.images) * (weight.weight.sum() - 3) ** 2

    losses = X.fit_on_auxiliary([weight], optimizer, data, step_loss, epochs=2, batch_size=3, size=16,
                                mosaic_rate=0.0, rng=np.random.default_rng(0))
    assert sizes == [3, 3, 2] * 2  # 8 images, batches of 3, two epochs
    value, expected = 0.0, []
    for n in sizes:  # gradient descent by hand: w <- w - 0.1 * 2n (w - 3)
        expected.append(n * (value - 3) ** 2)
        value -= 0.1 * 2 * n * (value - 3)
    assert losses == pytest.approx(expected, rel=1e-5)
    assert weight.weight.item() == pytest.approx(value, rel=1e-5)
    assert not weight.training and not weight.weight.requires_grad

    sizes.clear()
    cut = X.fit_on_auxiliary([weight], optimizer, data, step_loss, epochs=2, batch_size=3, size=16,
                             mosaic_rate=0.0, rng=np.random.default_rng(0), max_steps=4)
    assert len(cut) == 4 and sizes == [3, 3, 2, 3]


def test_modules_are_frozen_after_an_error(data):
    module = nn.Linear(1, 1)

    def step_loss(batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        X.fit_on_auxiliary([module], torch.optim.SGD(module.parameters(), lr=0.1), data, step_loss, epochs=1,
                           batch_size=4, size=16, mosaic_rate=0.0, rng=np.random.default_rng(0))
    assert not module.training and not any(p.requires_grad for p in module.parameters())


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("option, value", [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("mosaic_rate", 1.5),
                                           ("max_steps", 0)])
def test_training_arguments_out_of_range_are_config_errors_naming_them(option, value):
    arguments = {"epochs": 1, "batch_size": 1, "lr": 1e-3, "mosaic_rate": 0.0, "max_steps": None}
    X.check_training("train_x", **arguments)
    with pytest.raises(ConfigError, match=f"train_x {option} must be"):
        X.check_training("train_x", **{**arguments, option: value})


def test_official_settings_follow_the_auxiliary_dataset(data):
    assert data.name and X.official_setting(None, {data.name: 7, "visa": 15}, data, "train_x", "epochs") == 7
    assert X.official_setting(3, {data.name: 7}, data, "train_x", "epochs") == 3  # given: used as is
    assert X.official_setting(None, {"mvtec": 0.2}, data, "train_x", "mosaic_rate", 0.0) == 0.0
    with pytest.raises(ConfigError, match="no official epochs .*pass epochs="):
        X.official_setting(None, {"visa": 15}, data, "train_x", "epochs")
