"""The features cache: a rerun, or a run with another refiner, does no backbone forward.

Backbone forwards are counted by wrapping ``EfficientNetLiteBackbone.features``. Three real runs
(``bench.api.run``) share one output folder: the first (empty cache) encodes every test image; a
rerun of the same config and a run with a second refiner encode none. Training-free refiners
only: PGT's synthetic training images (trainable refiners) are made per run and always encoded.
The rerun is the timed one; the first run's seconds are taken around it alike.
"""
from __future__ import annotations

import time

from bench.api import run
from bench.backbones.efficientnet_lite import EfficientNetLiteBackbone
from bench.config import RunConfig


def test_cache_rerun_and_second_refiner_do_no_forwards(measure, report, one_category_tree, run_options, tmp_path,
                                                        monkeypatch):
    forwards: list[int] = []
    features = EfficientNetLiteBackbone.features

    def counted(self, x):
        forwards.append(len(x))
        return features(self, x)

    monkeypatch.setattr(EfficientNetLiteBackbone, "features", counted)

    def bench_run(refiners: str) -> tuple[float, int]:
        forwards.clear()
        config = RunConfig(data_root=one_category_tree, methods="musc", refiners=refiners, out=tmp_path,
                           resume=False, **run_options)
        start = time.perf_counter()
        run(config, progress=False)
        return time.perf_counter() - start, sum(forwards)

    n_images = len(list(one_category_tree.glob("*/test/*/*.png")))
    first_seconds, first = bench_run("gaussian")
    rerun = measure(bench_run, "gaussian")
    second_seconds, second = bench_run("guided")

    section = f"features cache ({n_images} test images, musc, training-free refiners)"
    report.add(section, "first run (cache empty), none + gaussian", first_seconds, **{"backbone forwards (images)": first})
    report.add(section, "rerun, same config", rerun.seconds, **{"backbone forwards (images)": rerun.result[1]})
    report.add(section, "second refiner, none + guided", second_seconds, **{"backbone forwards (images)": second})
    report.ratio(section, "first run over rerun", ("first run (cache empty), none + gaussian",), "rerun, same config")
    assert (first, rerun.result[1], second) == (n_images, 0, 0)
