"""Issue 17, the store and the cache: altered cache files, a dataset changed under an unfinished
run, odd characters in --out, full disks and databases, dead or read-only stores."""
import contextlib
import errno
import math
import os
import shutil
import sqlite3
import stat
import subprocess

import pytest
import torch
from mlflow.exceptions import MlflowException

from bench.tracking import open_store
from hostile import fails, invoke, run_args, run_id, succeeds
from processes import free_port

MUSC = ["--methods", "musc"]
METRICS = ["image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro"]


def cached_run(root, out, *extra):
    args = [a for a in run_args(root, out, *MUSC, *extra) if a != "--no-cache"]
    return succeeds(args)


def cache_warnings(recorded, words: str) -> int:
    return sum(words in str(w.message) for w in recorded)


def test_an_altered_cache_file_is_recomputed(base, tmp_path, recwarn):
    """Well-formed files with altered tensor bytes were used (pixel AP 49.2 -> 47.4, no warning)."""
    out = tmp_path / "out"
    first = cached_run(base, out)
    want = open_store(out).units(run_id(first))[METRICS]
    for path in sorted((out / "cache").rglob("*.pt")):
        record = torch.load(path, weights_only=True)
        record["layers"] = {k: v + 0.5 for k, v in record["layers"].items()}  # checksum left as it was
        torch.save(record, path)
    second = cached_run(base, out, "--no-resume")
    assert cache_warnings(recwarn, "do not match their checksum") == len(list((out / "cache").rglob("*.pt")))
    assert open_store(out).units(run_id(second))[METRICS].equals(want)


def test_a_dataset_changed_under_an_unfinished_run_starts_a_new_one(base, tmp_path):
    """Resume kept blocks computed on the old files: two answers for the same maps in one run."""
    root, out = shutil.copytree(base, tmp_path / "tree"), tmp_path / "out"
    first = run_id(succeeds(run_args(root, out, *MUSC)))
    open_store(out).client.set_terminated(first, status="FAILED")  # as if killed
    image = sorted((root / "tile" / "test" / "good").glob("*.png"))[0]
    image.write_bytes(image.read_bytes() + b"\0")  # any change of a file: size or time
    second = succeeds(run_args(root, out, *MUSC))
    assert run_id(second) != first and "the dataset's files changed" in second.output


def test_external_maps_changed_under_an_unfinished_run_start_a_new_one(base, tmp_path):
    """Found in the fourth round: maps made again after an interrupted `external` run were ignored
    for its finished blocks (pixel AUROC 94.7 kept where the new maps give 5.3, exit 0)."""
    import numpy as np

    out, maps = tmp_path / "out", tmp_path / "maps"
    for image in (base / "tile" / "test").rglob("*.png"):
        target = maps / "tile" / "test" / image.parent.name / f"{image.stem}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.zeros((8, 8), np.float32))
    args = run_args(base, out, "--methods", "external", "--set", f"method_options.external.maps_dir={maps}")
    first = run_id(succeeds(args))
    open_store(out).client.set_terminated(first, status="FAILED")  # as if killed
    assert run_id(succeeds(args)) == first  # the same maps: resumed
    open_store(out).client.set_terminated(first, status="FAILED")
    target.write_bytes(target.read_bytes() + b"\0")  # any change of a map file: size or time
    second = succeeds(args)
    assert run_id(second) != first and "or the run's other input files did" in second.output


def test_a_weights_file_replaced_under_an_unfinished_run_starts_a_new_one(base, tmp_path):
    """The resume identity held the path of --weights FILE, not the file: a checkpoint replaced at
    the same path would have been resumed over (seen in the fourth round, for the lead)."""
    from bench.backbones.efficientnet_lite import imagenet_weights_path

    weights, out = shutil.copy(imagenet_weights_path(), tmp_path / "lite0.pth"), tmp_path / "out"
    args = run_args(base, out, *MUSC, "--weights", weights)
    first = run_id(succeeds(args))
    open_store(out).client.set_terminated(first, status="FAILED")  # as if killed
    assert run_id(succeeds(args)) == first  # the same file: resumed
    open_store(out).client.set_terminated(first, status="FAILED")
    os.utime(weights, ns=(0, 0))  # replaced: another modification time
    second = succeeds(args)
    assert run_id(second) != first and "or the run's other input files did" in second.output


@pytest.mark.parametrize("name", ["outp%41b", "outq?x", "out#1"])
def test_out_is_taken_literally(base, tmp_path, name, monkeypatch):
    """``--out 'outp%41b'`` wrote outpAb/mlflow.db; ``'outq?x'`` a sqlite file ``outq``."""
    monkeypatch.chdir(tmp_path)
    store = open_store(name)
    assert (tmp_path / name / "mlflow.db").is_file() and sorted(os.listdir(tmp_path)) == [name]
    assert store.lock_path == tmp_path / name / "mlflow.db.lock"


def test_out_is_taken_literally_by_a_run(base, tmp_path):
    out = tmp_path / "o%41?x#y"
    succeeds(run_args(base, out, *MUSC))
    assert (out / "mlflow.db").is_file() and sorted(os.listdir(tmp_path)) == [out.name]


def test_a_cache_write_that_fails_only_warns_once(base, tmp_path, monkeypatch, recwarn):
    """torch.save reports a full disk as RuntimeError, which the cache did not catch."""
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 982")

    monkeypatch.setattr("bench.cache.torch.save", full)
    result = cached_run(base, tmp_path / "out")
    assert cache_warnings(recwarn, "cannot write feature cache file") == 1 and "MLflow run" in result.output
    assert not list((tmp_path / "out" / "cache").rglob("*.pt"))


def disk_full(*args, **kwargs):
    """How MLflow's sqlite store reports a full disk or database."""
    try:
        raise sqlite3.OperationalError("database or disk is full")
    except sqlite3.OperationalError as exc:
        raise MlflowException("(sqlite3.OperationalError) database or disk is full") from exc


def test_a_full_database_is_one_error_and_the_run_resumes(base, tmp_path, monkeypatch):
    """235 lines and 5 tracebacks before; the store stays consistent: the rerun resumes and finishes."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    out = tmp_path / "out"
    log_batch = SqlAlchemyStore.log_batch
    calls = []

    def full_after_the_parent(self, *args, **kwargs):  # the parent's parameters fit, the first unit does not
        calls.append(1)
        return log_batch(self, *args, **kwargs) if len(calls) == 1 else disk_full()

    with monkeypatch.context() as patch:
        patch.setattr(SqlAlchemyStore, "log_batch", full_after_the_parent)
        fails(run_args(base, out, *MUSC), f"MLflow store {out / 'mlflow.db'}: cannot write", "database or disk is full",
              "rerun")
    parents = open_store(out).parents()
    assert list(parents.status) == ["FAILED"]
    again = succeeds(run_args(base, out, *MUSC))
    assert run_id(again) == parents.run_id[0]


def test_an_artifact_that_cannot_be_written_is_one_error(base, tmp_path, monkeypatch):
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    def no_space(self, local_file, artifact_path=None):
        raise OSError(errno.ENOSPC, "No space left on device", local_file)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", no_space)
    fails(run_args(base, tmp_path / "out", *MUSC), "cannot write", "No space left on device")


def test_a_dead_tracking_server_fails_at_once(base, out):
    """248 s of MLflow's retries before; now the connection is tried once (a few seconds at most)."""
    uri = f"http://127.0.0.1:{free_port()}"
    fails(run_args(base, out, *MUSC, "--tracking-uri", uri), f"--tracking-uri {uri}", "no server answers there")
    fails(["table", "--tracking-uri", uri], "no server answers there")


def test_readers_given_no_store_create_nothing(tmp_path):
    fails(["table", "--out", tmp_path / "typo"], f"--out {tmp_path / 'typo'}", "no MLflow store there")
    assert not (tmp_path / "typo").exists()


@contextlib.contextmanager
def read_only(folder):
    """``folder`` and its files made unwritable, even for root (``chattr +i``) where that works."""
    paths = [folder, *folder.iterdir()]
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode:
            pytest.skip("running as root on a file system without chattr +i")
        undo = ["chattr", "-i", *map(str, paths)]
    else:
        for path in paths:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        undo = None
    try:
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            for path in paths:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_table_reads_a_read_only_store(base, tmp_path):
    out = tmp_path / "out"
    succeeds(run_args(base, out, *MUSC))
    shutil.rmtree(out / "artifacts")  # the table needs the database alone
    with read_only(out):
        with pytest.raises(OSError):
            (out / "probe").write_text("")
        table = invoke(["table", "--out", out, "--metric", "pixel_auroc"])
    assert table.exit_code == 0 and "| tile" in table.output, table.output


def test_readers_of_a_run_named_twice_or_unfinished_and_an_output_over_the_store(base, tmp_path):
    """Found in the third round, each exit 0: `bench export --output <out>/mlflow.db` (and `bench
    report`) replaced the store with its file; `--runs ID,ID` exported every row twice; a table of
    an unfinished run (the latest when none finished) did not say so."""
    out = tmp_path / "out"
    parent = run_id(succeeds(run_args(base, out, *MUSC)))
    for command in ("export", "report"):
        fails([command, "--out", out, "--output", out / "mlflow.db"], "is an sqlite database", "refusing to overwrite")
    once = succeeds(["export", "--out", out, "--runs", parent]).output
    assert succeeds(["export", "--out", out, "--runs", f"{parent},{parent}"]).output == once
    open_store(out).client.set_terminated(parent, status="FAILED")
    table = succeeds(["table", "--out", out, "--metric", "pixel_auroc"]).output
    assert f"Warning: run {parent} is FAILED, not finished" in table and "| tile" in table


def test_seeds_run_with_and_without_the_cache_are_one_configuration(base, tmp_path):
    """Found in the third round: `--no-cache` (or `--set figures=0`) on one seed made it another
    configuration, so `--runs all` showed blocks of one seed each instead of their mean."""
    out = tmp_path / "out"
    cached_run(base, out, "--seed", "0")
    succeeds(run_args(base, out, *MUSC, "--seed", "1", "--set", "figures=0"))
    table = succeeds(["table", "--out", out, "--runs", "all", "--metric", "pixel_auroc"]).output
    rows = [line for line in table.splitlines() if line.startswith("| tile")]
    assert len(rows) == 1 and "±" in rows[0], table  # one block: the mean ± std of the two seeds


def test_readers_name_units_whose_bootstrap_replicates_are_gone(base, tmp_path):
    """Found in the fifth round: a unit whose bootstrap.npz was deleted (or left out of a partial copy
    of a store) lost its intervals, and the Mean's, with no word; `bench export` wrote empty ci_low."""
    out = tmp_path / "out"
    succeeds(run_args(base, out, *MUSC, "--refiners", "none,gaussian"))
    assert "bootstrap replicates" not in succeeds(["table", "--out", out]).output
    saved = sorted((out / "artifacts").rglob("bootstrap.npz"))
    assert len(saved) == 2
    saved[0].unlink()
    unit = saved[0].parent.parent.name  # artifacts/<experiment>/<unit run>/artifacts/bootstrap.npz
    for command in (["table"], ["export"], ["report", "--output", tmp_path / "report.html"]):
        output = succeeds([*command, "--out", out]).output
        warnings = [line for line in output.splitlines() if "bootstrap replicates" in line]
        assert len(warnings) == 1 and warnings[0].startswith("Warning: "), output
        assert "of 1 unit(s) are missing: tile/musc/" in warnings[0] and f"(run {unit})" in warnings[0], warnings


def test_a_mean_over_seeds_with_one_seed_undefined_is_undefined(base, tmp_path):
    """Found in the fifth round: with one anomalous image, seed 2's groups 2..k hold no anomaly, so
    its image AUROC there is undefined; `bench table --runs all` showed 100.0 ± 0.0, the mean of the
    other seeds, as the mean over all (the report's leaderboard as well)."""
    from bench.identity import select
    from bench.report.leaderboard import leaderboard

    root, out = shutil.copytree(base, tmp_path / "tree"), tmp_path / "out"
    anomalous = sorted(p for p in (root / "tile" / "test").rglob("*.png") if p.parent.name != "good")
    for image in anomalous[1:]:
        image.unlink()
        (root / "tile" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png").unlink()
    for seed in (0, 2):
        succeeds(run_args(root, out, *MUSC, "--seed", seed))
    units = select(open_store(out, create=False), "all").units.set_index("seed")
    assert math.isnan(units.image_auroc_g2k["2"]) and units.image_auroc_g2k["0"] == 1  # the case holds
    table = succeeds(["table", "--out", out, "--runs", "all", "--metric", "image_auroc"]).output
    assert [line.split("|")[2].strip() for line in table.splitlines() if line.startswith(("| tile", "| Mean"))] == \
        ["undef", "undef"], table
    stream = succeeds(["table", "--out", out, "--runs", "all", "--metric", "image_auroc", "--scope", "stream"]).output
    assert "| tile       | 100.0 ± 0.0 |" in stream, stream  # defined for every seed: the mean ± std
    cell = leaderboard(select(open_store(out, create=False), "all").units, ["image_auroc_g2k"])[0].cells
    assert math.isnan(cell["image_auroc_g2k"].mean)
