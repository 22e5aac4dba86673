"""Run identity: which runs are seeds of one configuration, and which are different configurations.

A configuration is a run's parameters (everything ``bench run`` logs on its parent run, the
resolved dataset included) without the seed, where results go or how (cache, figures), or how
many bootstrap resamples its intervals used. Tables average over seeds only within a configuration: ``--runs all`` on a
store holding several shows one block per configuration, labelled by the parameters that differ.
A seed that appears in several finished runs of one configuration is counted once (the run that
finished last) and flagged.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pandas as pd

from bench.errors import BenchError, first_few
from bench.resume import NOT_IN_HASH
from bench.tracking import REPLICATES, Store

# Parameters that do not change what a run computes: its seed, how many bootstrap resamples its
# intervals used, and those that a resume ignores too (where and how it ran: out, cache, figures, ...).
NOT_IDENTITY = ("seed", "bootstrap", *NOT_IN_HASH)


def config_id(params: dict[str, str]) -> str:
    """A configuration's identity: the hash of its parameters without ``NOT_IDENTITY``, 12 hex digits."""
    kept = {str(k): str(v) for k, v in params.items() if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def run_name(dataset: str, methods: list[str], refiners: list[str], params: dict[str, str]) -> str:
    """A parent run's name: dataset, methods, refiners, seed and the configuration's short id,
    e.g. ``synthetic musc ard+none seed0 3f2a1c``."""
    return f"{dataset} {'+'.join(methods)} {'+'.join(refiners)} seed{params.get('seed', '?')} {config_id(params)[:6]}"


def differing(configs: dict[str, dict[str, str]]) -> dict[str, str]:
    """Label of each configuration: the parameters whose values differ between them (``k=v, ...``)."""
    keys = sorted({k for params in configs.values() for k in params if k not in NOT_IDENTITY})
    varying = [k for k in keys if len({params.get(k) for params in configs.values()}) > 1]
    return {cid: ", ".join(f"{k}={params.get(k, '-')}" for k in varying) for cid, params in configs.items()}


@dataclass
class Selection:
    """Units of the selected runs, with their configuration, and what a reader should know."""

    units: pd.DataFrame  # Store.units() rows plus the column ``config``
    labels: dict[str, str]  # configuration id -> what differs from the others ("" when one)
    notes: list[str] = field(default_factory=list)  # unfinished runs, duplicated seeds: one line each

    def blocks(self) -> list[tuple[str, pd.DataFrame]]:
        """(configuration id, its units), in the order of first appearance."""
        return [(cid, self.units[self.units.config == cid]) for cid in dict.fromkeys(self.units.config)]

    def title(self, config: str, units: pd.DataFrame) -> str:
        """``configuration 3f2a1c9e01ab (pgt.n_groups=2): n = 2 seeds (0, 1)``."""
        seeds = sorted(units.seed.unique(), key=lambda s: (len(str(s)), str(s)))
        what = f" ({self.labels[config]})" if self.labels.get(config) else ""
        return f"configuration {config}{what}: n = {len(seeds)} seed(s) ({', '.join(map(str, seeds))})"


def select(store: Store, runs: str = "latest", replicates: bool = False) -> Selection:
    """The units of ``runs`` ('latest', 'all' finished runs, or comma-separated run ids), grouped
    by configuration; per configuration and seed only the run that finished last is kept."""
    parents = store.parents()
    if runs == "all":
        parents = parents[parents.status == "FINISHED"] if not parents.empty else parents
        if parents.empty:
            raise BenchError("--runs all: the MLflow store holds no finished bench run yet")
        ids = list(parents.run_id)
    elif runs == "latest":
        ids = None
    else:
        ids = list(dict.fromkeys(r.strip() for r in runs.split(",") if r.strip()))  # a run named twice counts once
    units = store.units(ids, replicates=replicates)
    chosen = parents[parents.run_id.isin(set(units.parent_id))].copy()
    chosen["config"] = [config_id(p) for p in chosen.params]
    chosen = chosen.sort_values("end_time", ascending=False, na_position="last", kind="stable")
    notes, keep = [], []
    for run_id, status in zip(chosen.run_id, chosen.status):
        if status != "FINISHED":
            notes.append(f"run {run_id} is {status}, not finished: its numbers cover only the units it finished; "
                         "rerun its `bench run` command to resume it")
    for (cid, seed), runs_of_seed in chosen.groupby(["config", "seed"], sort=False):
        keep.append(runs_of_seed.run_id.iloc[0])
        if len(runs_of_seed) > 1:
            notes.append(f"configuration {cid}: seed {seed} appears in {len(runs_of_seed)} runs "
                         f"({', '.join(runs_of_seed.run_id)}); counted once, from {runs_of_seed.run_id.iloc[0]} "
                         "(finished last)")
    configs = dict(zip(chosen.config, chosen.params))
    units = units[units.parent_id.isin(keep)].copy()
    if replicates:
        notes += _missing_replicates(units, dict(zip(chosen.run_id, chosen.params)))
    units["config"] = units.parent_id.map(dict(zip(chosen.run_id, chosen.config)))
    return Selection(units.reset_index(drop=True), differing(configs) if len(configs) > 1 else dict.fromkeys(configs, ""),
                     notes)


def _missing_replicates(units: pd.DataFrame, params: dict[str, dict[str, str]]) -> list[str]:
    """One note naming the units of runs with bootstrap resamples whose ``bootstrap.npz`` is gone
    (deleted, or a partial copy of a store): their intervals, and the Mean's, are left empty."""
    expected = units.parent_id.map(lambda p: params.get(p, {}).get("bootstrap", "0") not in ("0", "null"))
    gone = units[expected & units.replicates.isna()]
    if gone.empty:
        return []
    names = [f"{u.category}/{u.method}/{u.refiner} seed {u.seed} (run {u.run_id})" for u in gone.itertuples()]
    return [f"the bootstrap replicates ({REPLICATES}) of {len(names)} unit(s) are missing: {first_few(names)}; "
            "their 95% intervals, and those of the Mean, are left empty"]
