"""What every learned CLIP method's ``train`` shares (bench/methods/_clip/training.py): the method's type, the
official settings per auxiliary dataset, the checks before binding, and what is recorded after the loop."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.methods._clip.auxiliary import AuxiliaryData
from bench.methods._clip.training import start_training
from bench.methods._learned import LearnedMethod
from bench.records import ScoreOutput


class Toy(LearnedMethod):
    """A learned method with one linear layer, never scored."""

    name = "toy"
    checkpoint_help = "none"
    checkpoint_format = "bench.toy"

    def __init__(self) -> None:
        super().__init__("untrained", 0, settings={}, paper="", arxiv="", default_backbone="")

    def build(self, backbone) -> nn.Module:
        return nn.Linear(2, 1)

    def load(self, path, module):
        raise AssertionError("untrained: nothing to load")

    def score(self, features, reference=None) -> ScoreOutput:
        raise AssertionError("not scored here")


BACKBONE = SimpleNamespace(name="fake", weights="random", input_size=16)


def start(dataset, method=None, **options):
    arguments = dict(epochs=1, lr=0.1, batch_size=2, seed=0, max_steps=None, progress=False)
    return start_training(method or Toy(), Toy, BACKBONE, dataset, None, **{**arguments, **options})


def test_another_method_type_is_refused(synthetic_tiles):
    with pytest.raises(ConfigError, match="toy train: trains a Toy method, got str"):
        start(synthetic_tiles, method="aprilgan")


def test_official_settings_follow_the_auxiliary_dataset_and_mosaics_are_recorded_only_where_made(synthetic_tiles):
    name = AuxiliaryData.open(synthetic_tiles).name
    method = Toy()
    run = start(synthetic_tiles, method, epochs=None, official={"epochs": {name: 3, "visa": 15}})
    assert (run.epochs, run.lr, run.batch_size, run.mosaic_rate, run.size) == (3, 0.1, 2, None, 16)
    assert run.module is method.learned and method.backbone is BACKBONE  # bound
    run.record([0.5, 0.25], None, augmentation=False)
    trained = method.provenance["trained"]
    assert "mosaic_rate" not in trained and trained["seed"] == 0 and trained["augmentation"] is False
    assert (trained["epochs"], trained["steps"], trained["final_loss"]) == (3, 2, 0.25)
    assert method.info.settings["checkpoint_source"] == "trained in this process"

    mosaics = start(synthetic_tiles, official={"mosaic_rate": {"mvtec": 0.2}})
    assert mosaics.mosaic_rate == 0.0  # no official rate for this dataset: none, but recorded
    mosaics.record([1.0], None)
    assert mosaics.method.provenance["trained"]["mosaic_rate"] == 0.0


@pytest.mark.parametrize("option, value", [("epochs", 0), ("lr", -1.0), ("batch_size", 0), ("max_steps", 0)])
def test_a_bad_argument_is_refused_before_binding(synthetic_tiles, option, value):
    method = Toy()
    with pytest.raises(ConfigError, match=f"toy train {option}"):
        start(synthetic_tiles, method, **{option: value})
    assert method.learned is None


def test_no_official_value_asks_for_the_option(synthetic_tiles):
    with pytest.raises(ConfigError, match="no official lr .*pass lr="):
        start(synthetic_tiles, lr=None, official={"lr": {"visa": 4e-5}})


def test_the_loop_trains_the_bound_module(synthetic_tiles):
    run = start(synthetic_tiles, max_steps=2)
    weight = run.module.weight.clone()
    optimizer = torch.optim.SGD(run.module.parameters(), lr=run.lr)
    losses = run.fit([run.module], optimizer, lambda batch: run.module(torch.ones(2)).square().sum(), desc="toy")
    assert len(losses) == 2 and not torch.equal(weight, run.module.weight)
