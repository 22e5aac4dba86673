import math
import platform

import numpy as np
import pytest
import torch

from bench.bootstrap import save
from bench.errors import BenchError
from bench.tracking import REPLICATES, open_store


def test_units_round_trip_through_the_store(tmp_path):
    store = open_store(tmp_path, experiment="t")
    parent = store.start_parent("p", {"seed": "0"})
    unit = {"dataset": "d", "method": "m", "refiner": "r", "contamination": 0.1, "category": "c", "seed": 0}
    artifact = tmp_path / "c.csv"
    artifact.write_text("a,b\n1,2\n")
    replicates = save(tmp_path / "u" / REPLICATES, {"pixel_ap": np.array([0.5, 0.4, 0.6], np.float32)})
    series = {"loss": [3.0, 2.0], "group_pixel_ap": {1: 0.2, 2: 0.3}}
    store.log_unit(parent, unit, {"pixel_ap": 0.5, "image_auroc": math.nan}, {"backbone": "x"}, series, [artifact, replicates])
    frame = store.units()
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row.method, row.refiner, row.category, row.contamination) == ("m", "r", "c", 0.1)
    assert row.pixel_ap == 0.5 and math.isnan(row.image_auroc)
    run = store.client.search_runs([store.experiment_id], "tags.`bench.level` = 'unit'")[0]
    assert run.data.params["backbone"] == "x"
    assert [m.value for m in store.client.get_metric_history(run.info.run_id, "loss")] == [3.0, 2.0]
    assert [(m.step, m.value) for m in store.client.get_metric_history(run.info.run_id, "group_pixel_ap")] == [(1, 0.2), (2, 0.3)]
    assert [a.path for a in store.client.list_artifacts(run.info.run_id)] == [REPLICATES, "c.csv"]
    with_replicates = store.units(replicates=True).iloc[0]
    assert with_replicates.run_id == run.info.run_id and with_replicates.parent_id == parent
    assert with_replicates.replicates["pixel_ap"].tolist() == pytest.approx([0.5, 0.4, 0.6])
    assert store.parents().iloc[0].params == {"seed": "0"}
    parent_run = store.client.get_run(parent)
    assert "bench.version.torch" in parent_run.data.tags and parent_run.data.params["seed"] == "0"
    assert parent_run.data.tags["bench.cpu"] == f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def test_latest_parent_is_the_default(tmp_path):
    store = open_store(tmp_path)
    first = store.start_parent("a", {})
    store.log_unit(first, {"dataset": "d", "method": "m", "refiner": "none", "contamination": 0, "category": "c", "seed": 0}, {"pixel_ap": 0.1}, {})
    second = store.start_parent("b", {})
    store.log_unit(second, {"dataset": "d", "method": "m", "refiner": "none", "contamination": 0, "category": "c", "seed": 1}, {"pixel_ap": 0.3}, {})
    assert store.units().pixel_ap.tolist() == [0.3]
    assert sorted(store.units([first, second]).pixel_ap.tolist()) == [0.1, 0.3]


def test_empty_store_and_unwritable_out(tmp_path):
    with pytest.raises(BenchError, match="no bench run yet"):
        open_store(tmp_path).units()
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(BenchError, match="--out .*file"):
        open_store(blocked / "sub")


def test_units_come_in_the_order_they_were_logged(tmp_path):
    """Tables list refiners in order of first appearance: the order of ``--refiners``, not backwards."""
    store = open_store(tmp_path)
    parent = store.start_parent("p", {})
    refiners = ["none", "ard", "destseg", "guided"]
    for refiner in refiners:
        store.log_unit(parent, {"dataset": "d", "method": "m", "refiner": refiner, "contamination": 0,
                                "category": "c", "seed": 0}, {"pixel_ap": 0.1}, {})
    assert store.units(parent).refiner.tolist() == refiners
