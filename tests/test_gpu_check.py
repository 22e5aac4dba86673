"""`make gpu-check`'s script in its CPU dry form (``--device cpu --tiny``), so that it cannot rot.

Every section runs on tiny sizes (ViT-B-32 at 96 px, random weights, a few ARD steps, a tiny
``bench run`` in a subprocess); the JSON report must hold each method's agreement numbers and each
speed figure. The GPU numbers themselves come only from a run on a GPU.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from bench.methods import winclip
from bench.methods.adaclip import model as adaclip_prompts
from bench.methods.aprilgan import model as aprilgan_prompts
from bench.registry import METHODS
from clip_helpers import few_templates_fixture

# the prompt ensembles of APRIL-GAN, AdaCLIP and WinCLIP take 10-40 s to encode on one thread: one template each
few_templates = few_templates_fixture(aprilgan_prompts, adaclip_prompts, winclip)
pytestmark = pytest.mark.usefixtures("one_thread", "few_templates")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_writes_every_section(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    # fp32 as the "half" precision: bf16 is emulated (many times slower) on CPUs without AVX-512 BF16
    assert gpu_check.main(["--device", "cpu", "--tiny", "--half", "fp32", "--out", str(out)]) == 0, capsys.readouterr().out
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert set(sections) == {"methods", "musc_speed", "ard", "run"}
    assert all("error" not in s for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    rows = sections["methods"]["result"]
    assert sorted(r["method"] for r in rows) == sorted(METHODS.resolve("all"))
    for row in rows:  # fp32 twice: the same maps and scores (seeded random weights, same images)
        assert row["cpu/fp32 max_rel_map"] < 1e-5 and row["cpu/fp32 max_abs_score"] < 1e-5, row
        assert row["cpu/fp32 spearman_pixels"] > 0.999, row
    musc = sections["musc_speed"]["result"]
    assert musc["ms_per_image"] > 0 and 0 < musc["backbone_share_of_peak"] < 10
    ard = sections["ard"]["result"]
    assert ard["fp32_train_step_ms"] > 0 and ard["bf16_refine_ms_per_image"] > 0
    assert sections["run"]["result"]["returncode"] == 0
    printed = capsys.readouterr().out
    assert "musc_speed" in printed and "report:" in printed


def test_a_failing_section_is_recorded_and_fails_the_check(gpu_check, tmp_path, monkeypatch):
    def broken(args):
        raise RuntimeError("CUDA error: no kernel image is available")

    monkeypatch.setitem(gpu_check.SECTIONS, "ard", broken)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--sections", "ard", "--out", str(out)]) == 1
    section = json.loads(out.read_text())["sections"]["ard"]
    assert "no kernel image" in section["error"] and math.isfinite(section["seconds"])


def test_bad_options_are_refused_before_any_work(gpu_check, tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.main(["--sections", "methods,nope", "--device", "cpu", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_the_offline_wheel_list_covers_every_dependency():
    """`make gpu-wheels` downloads scripts/gpu_wheels.txt for a GPU machine without a package index:
    each of the project's dependencies must be either in it or named as provided by the machine's
    PyTorch image, so that a dependency added later cannot be forgotten there."""
    def name(requirement: str) -> str:
        return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement.strip())[0].lower())

    lines = (SCRIPT.parent / "gpu_wheels.txt").read_text().splitlines()
    pinned = {name(line) for line in lines if line.strip() and not line.startswith("#")}
    provided = {name(n) for line in lines if line.startswith("# provided:") for n in line.split(":", 1)[1].split()}
    assert all("==" in line for line in lines if line.strip() and not line.startswith("#"))  # pinned versions
    project = [r for r in importlib.metadata.requires("anorefiner-bench") if "extra ==" not in r]
    assert len(project) > 10 and {name(r) for r in project} - pinned - provided == set()
    assert not pinned & provided
