"""The Python API: run a configuration, read the store, render a table.

    from bench.api import RunConfig, main_table, open_store, render, run

    summary = run(RunConfig(methods="musc", refiners="ard"))   # results/ as the MLflow store
    units = open_store("results").units(summary.parent_id)     # one row per unit run
    print(render(main_table(units, "pixel_ap_g2k")))

(``examples/python_api.py``, run by the tests.)
Each concern lives in its own module: ``bench.plan`` (the checks and set-up done before any
work), ``bench.runner`` (the tasks, the store), ``bench.embedded`` (the default dataset),
``bench.artifacts``, ``bench.catalog`` (``bench list methods``), ``bench.imageio``.
"""
from __future__ import annotations

from bench.catalog import MethodCard, method_catalog
from bench.config import RunConfig, apply_overrides, parse_set
from bench.plan import RunPlan, SkippedMethodWarning, Task, build_plan
from bench.render import render
from bench.runner import Runner, RunSummary, run
from bench.tables import main_table
from bench.tracking import open_store

__all__ = ["MethodCard", "RunConfig", "RunPlan", "RunSummary", "Runner", "SkippedMethodWarning", "Task",
           "apply_overrides", "build_plan", "main_table", "method_catalog", "open_store", "parse_set", "render", "run"]
