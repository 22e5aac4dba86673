"""Run a configuration, read the store, render a table (README, "Python API").

Usage: python examples/python_api.py [KEY=VALUE ...]   (any RunConfig field, as `bench run --set`)
"""
import sys

from bench.api import RunConfig, apply_overrides, main_table, open_store, parse_set, render, run

config = apply_overrides(RunConfig(methods="musc", refiners="ard"), parse_set(tuple(sys.argv[1:])))
summary = run(config, progress=False)  # MLflow store and embedded data under config.out (results/)
units = open_store(config.out).units(summary.parent_id)  # one row per (category, method, refiner) unit
print(render(main_table(units, "pixel_ap_g2k")))  # markdown; render(..., "latex") or "csv"
