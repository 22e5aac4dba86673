"""A CPU ``bench run`` serial (one process, every core as torch threads) against ``--executor
processes`` (one worker process per core, one torch thread each), side by side.

Two categories of the embedded dataset, MuSc on EfficientNet-Lite0, refiners ``none`` and ``ard``,
features cache off: two tasks, so on 2 cores each worker gets one. At full size each category is
the demo's (120 images at 256 px, 4 groups, ARD at its defaults); the small form is 12 images of
64 px with 2 ARD steps. Ratio: the processes run's wall time / the serial run's.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.api import run
from bench.config import RunConfig

SECTION = "bench run, 2 categories (musc, none + ard): executors"


@pytest.fixture(scope="module")
def two_category_tree(tmp_path_factory: pytest.TempPathFactory, bench_size: str) -> Path:
    from bench.datasets.synthetic import generate

    shape = {"full": dict(n_test=120, size=256), "small": dict(n_test=12, size=64)}[bench_size]
    return generate(tmp_path_factory.mktemp("data") / "synthetic", seed=0, categories=["fabric", "pill"], n_train=0,
                    progress=False, **shape)


@pytest.mark.parametrize("executor", ["serial", "processes"])
def test_executor(measure, report, two_category_tree, run_options, executor, tmp_path):
    config = RunConfig(data_root=two_category_tree, methods="musc", refiners="ard", cache=False, out=tmp_path,
                       executor=executor, **run_options)
    wall = measure(lambda: run(config, progress=False))
    report.add(SECTION, executor, wall.seconds)
    if executor != "serial":
        report.ratio(SECTION, f"{executor} / serial", (executor,), "serial")
