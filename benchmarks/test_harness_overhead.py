"""Harness overhead of a real ``bench run``: stage timings read back from MLflow.

One category of the embedded dataset, MuSc on EfficientNet-Lite0, refiners ``none`` and ``ard``,
features cache off (so that the backbone runs). At full size this is one category of the demo
(120 images at 256 px, 4 groups, ARD at its defaults); the small form is 12 images of 64 px with
2 ARD steps, where fixed costs (MLflow, figures) dominate. Model compute is the features, the
ZSAD scoring and PGT (synthesis, training, refining); everything else (reading masks, metrics,
MLflow logging and artifacts, untimed set-up such as loading the backbone) is overhead.
"""
from __future__ import annotations

from bench.api import run
from bench.config import RunConfig
from bench.tracking import open_store

MODEL_STAGES = ("features", "scoring", "pgt")
STAGES = ("load", "features", "scoring", "pgt", "pgt_synth", "pgt_train", "pgt_refine", "metrics", "bootstrap", "logging")
PGT_PARTS = ("pgt_synth", "pgt_train", "pgt_refine")  # parts of pgt, not added to the total
TARGET_PERCENT = 10


def test_harness_overhead(measure, report, one_category_tree, run_options, tmp_path):
    config = RunConfig(data_root=one_category_tree, methods="musc", refiners="ard", cache=False, out=tmp_path,
                       **run_options)
    wall = measure(lambda: run(config, progress=False))
    logged = open_store(tmp_path).client.get_run(wall.result.parent_id).data.metrics
    seconds = {stage: logged.get(f"time_{stage}_s", 0.0) for stage in STAGES}
    total = logged["time_total_s"]
    section = f"bench run stage timings from MLflow ({one_category_tree.name}: 1 category, musc, none + ard)"
    for stage in STAGES:
        report.add(section, stage, seconds[stage], **{"% of total": 100 * seconds[stage] / total})
    untimed = total - sum(v for k, v in seconds.items() if k not in PGT_PARTS)
    report.add(section, "untimed (method and backbone set-up, preflight, run start)", untimed, **{"% of total": 100 * untimed / total})
    report.add(section, "total (time_total_s)", total, **{"% of total": 100.0})
    report.add(section, "wall around bench.api.run", wall.seconds, **{"% of total": 100 * wall.seconds / total})
    model = sum(seconds[s] for s in MODEL_STAGES)
    report.add(section, "overhead outside model compute", total - model,
               **{"% of total": 100 * (1 - model / total), "target %": f"<= {TARGET_PERCENT}"})
    assert set(MODEL_STAGES) | {"load", "metrics", "logging"} <= {k[5:-2] for k in logged if k.startswith("time_")}
