"""Resuming an interrupted ``bench run`` (killed, crashed, power cut) into its own MLflow parent run.

Identity: a run is identified by ``config_hash(params)``, a hash of the parameters logged on its
parent run (``RunConfig.to_params()`` with the resolved dataset root and layout), minus the keys
that only say where results go (``NOT_IN_HASH``). It is logged as the parent tag
``bench.config_hash``.

``start_or_resume`` finds the newest parent in the store with the same hash whose status is not
FINISHED (RUNNING, KILLED or FAILED) and resumes into it, unless that parent belongs to a process
that is still alive on this host (two runs of one config side by side then get two parents).
Resuming:

- keeps every FINISHED unit run (a unit run is FINISHED only after its metrics and artifacts are
  all logged, see ``Store.log_unit``);
- deletes every unit run that is not FINISHED (a process killed inside ``log_unit``);
- the Runner then skips each (category, method, contamination) block whose refiners all have a
  FINISHED unit, and recomputes the other blocks, logging only the refiners without a FINISHED
  unit, so a finished unit is never logged twice and its run id stays.

A recomputed block gives the same numbers as in an uninterrupted run: everything random in a
block is seeded from the run's seed and the block alone (stream order ``make_groups(seed)``,
PGT's generator ``(seed, contamination)``, refiners built per block from the seed in a forked
torch RNG, the embedded dataset from its own fixed seed), never from what ran before it in the
process.

A FINISHED parent with the same hash does not block anything: a new parent starts (a repeat).
``RunConfig.resume = False`` (``bench run --no-resume``) always starts a new parent.

The dataset is part of the identity: ``dataset_fingerprint`` (each test image's and mask's path,
size and modification time, and those of the files a method reads, ``Method.input_files``, and of
``--weights FILE``) is a parameter of the parent, so blocks computed on other files are never
mixed with new ones. When
the files changed since an unfinished run of the same options (tag ``bench.options_hash``), a new
parent starts and a line says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.interfaces import Dataset
from bench.tracking import Store, environment_tags

HASH_TAG = "bench.config_hash"
OPTIONS_TAG = "bench.options_hash"  # the config hash without the dataset fingerprint
FINGERPRINT = "dataset_fingerprint"  # the parameter holding it
HOST_TAG = "bench.host"
PID_TAG = "bench.pid"
RESUMED_TAG = "bench.resumed"  # how many times this parent was resumed
UNFINISHED = ("RUNNING", "KILLED", "FAILED")
# Parameters that say where results go, how to start or what else to keep, not what is computed:
# a rerun that changes only these (e.g. with --no-cache after a crash) resumes.
NOT_IN_HASH = ("out", "tracking_uri", "resume", "executor", "ray_address", "cache", "figures")

BlockKey = tuple[str, str, float]  # (category, method, contamination)


def say(message: str) -> None:
    """One line on stderr (the CLI's stdout carries the tables)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def config_hash(params: dict[str, object]) -> str:
    """Stable hash of a run's parameters (``NOT_IN_HASH`` left out), 16 hex digits."""
    kept = {str(k): str(v) for k, v in params.items() if k not in NOT_IN_HASH}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_fingerprint(dataset: Dataset, categories: list[str], inputs: Sequence[Path] = ()) -> str:
    """sha256 (16 hex digits) of the test files of ``categories``: each image's and mask's path
    relative to the dataset root, size and modification time, in order; then the same of the
    methods' ``inputs`` (``Method.input_files``). Files are stat'ed, not read."""
    digest = hashlib.sha256()
    root = Path(dataset.root).resolve()
    files = [(category, path) for category in categories for sample in dataset.test(category)
             for path in (sample.path, sample.mask_path) if path is not None]
    for category, path in [*files, *(("input", path) for path in inputs)]:
        stat = Path(path).stat()
        name = os.path.relpath(Path(path).resolve(), root)
        digest.update(f"{category}|{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _contamination(value: object) -> float:
    return round(float(value), 9)


def block_key(category: str, method: str, contamination: object) -> BlockKey:
    return (str(category), str(method), _contamination(contamination))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


def _owner_alive(tags: dict[str, str]) -> bool:
    """Whether the process that owns a RUNNING parent is still alive on this host.

    On another host there is no way to tell: the parent is taken as abandoned.
    """
    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        return _alive(int(tags.get(PID_TAG, "")))
    except ValueError:
        return False


@dataclass
class ResumeState:
    """The parent run of this process and the units it already holds."""

    parent_id: str
    resumed: bool = False
    finished: dict[tuple[str, str, float, str], str] = field(default_factory=dict)  # (block..., refiner) -> run id

    def unit_done(self, category: str, method: str, contamination: object, refiner: str) -> bool:
        return (*block_key(category, method, contamination), str(refiner)) in self.finished

    def block_done(self, category: str, method: str, contamination: object, refiners: list[str]) -> bool:
        """Every refiner of the block has a FINISHED unit: the block is skipped."""
        return all(self.unit_done(category, method, contamination, r) for r in refiners)

    def method_done(self, category: str, method: str, contaminations, refiners: list[str]) -> bool:
        """Every block of (category, method) is done: features and scoring are skipped too."""
        return all(self.block_done(category, method, c, refiners) for c in contaminations)


def _owner_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def find_unfinished(store: Store, digest: str, tag: str = HASH_TAG):
    """The newest unfinished parent whose ``tag`` is ``digest`` and whose owner is not alive, or None."""
    runs = store.client.search_runs(
        [store.experiment_id],
        f"tags.`{tag}` = '{digest}' and tags.`bench.level` = 'parent'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        if run.info.status not in UNFINISHED:
            continue
        if run.info.status == "RUNNING" and _owner_alive(run.data.tags):
            say(f"run {run.info.run_id} with the same config is still running (pid {run.data.tags.get(PID_TAG)}); "
                "not resuming it")
            continue
        return run
    return None


def start_or_resume(store: Store, name: str, params: dict[str, str], resume: bool = True) -> ResumeState:
    """Resume the unfinished parent with the same config hash, or start a new parent.

    Finding and claiming a parent happens under the store's lock, so two processes started
    together on the same config never resume into the same parent.
    """
    digest = config_hash(params)
    options = config_hash({k: v for k, v in params.items() if k != FINGERPRINT})
    with store.lock():
        candidate = find_unfinished(store, digest) if resume else None
        if candidate is None:
            stale = find_unfinished(store, options, OPTIONS_TAG) if resume else None
            if stale is not None:
                say(f"run {stale.info.run_id} of the same options is unfinished, but the dataset's files changed "
                    "since it started, or the run's other input files did (a method's, --weights; added, removed or "
                    "modified); starting a new run instead of resuming it")
            parent = store.start_parent(name, params, tags={HASH_TAG: digest, OPTIONS_TAG: options, **_owner_tags()})
            return ResumeState(parent)
        parent = candidate.info.run_id
        store.client.update_run(parent, status="RUNNING")
        times = int(candidate.data.tags.get(RESUMED_TAG, "0")) + 1
        for key, value in {**_owner_tags(), RESUMED_TAG: str(times)}.items():
            store.client.set_tag(parent, key, value)
    state = ResumeState(parent, resumed=True)
    deleted = 0
    for run in store.children(parent):
        tags = run.data.tags
        key = (*block_key(tags.get("bench.category"), tags.get("bench.method"), tags.get("bench.contamination", "nan")),
               str(tags.get("bench.refiner")))
        if run.info.status == "FINISHED" and key not in state.finished:
            state.finished[key] = run.info.run_id
        else:  # partial (killed while logging), or a duplicate
            store.client.delete_run(run.info.run_id)
            deleted += 1
    commit = candidate.data.tags.get("bench.git_commit")
    now = environment_tags().get("bench.git_commit")
    note = f"; note: it was started at commit {commit}, this is {now}" if commit and now and commit != now else ""
    say(f"resuming run {parent} (config {digest}, was {candidate.info.status}): keeping "
        f"{len(state.finished)} finished unit(s), deleted {deleted} partial unit(s){note}. "
        "Use --no-resume to start a new run instead")
    return state
