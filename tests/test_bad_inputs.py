"""Bad inputs through the real CLI: each one is answered by ONE line that names the file, option or
value and says what is valid, exit code != 0, never a traceback. Inputs that are merely unusual
(grayscale / RGBA images, mixed image sizes, a category with only normal or only anomalous images)
must work, with metrics that the labels do not define reported as undefined.
"""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bench.datasets.synthetic import generate
from bench.tracking import open_store
from hostile import eval_args, fails, invoke, run_args

# ----------------------------------------------------------------------------- dataset trees


def test_missing_dataset_dir(tmp_path, out):
    fails(run_args(tmp_path / "nowhere", out), str(tmp_path / "nowhere"), "not found")


def test_empty_dataset_dir(tmp_path, out):
    (tmp_path / "empty").mkdir()
    fails(run_args(tmp_path / "empty", out), str(tmp_path / "empty"), "no known dataset layout", "MVTec AD")


def test_category_without_test_folder(tree, tmp_path, out):
    root, _, _ = tree
    (root / "extra" / "train" / "good").mkdir(parents=True)
    fails(run_args(root, out), str(root / "extra" / "test"), "'extra' has no test/ folder", "<category>/test/<defect>")


def test_unknown_category_did_you_mean(base, tmp_path, out):
    fails(run_args(base, out, "--categories", "tiel"), "unknown category 'tiel'", "Did you mean 'tile'?", "Known: tile")


def test_unknown_method_did_you_mean(base, tmp_path, out):
    fails(run_args(base, out, "--methods", "mucs"), "unknown method 'mucs'", "Did you mean 'musc'?", "Known:")


def test_unknown_refiner_did_you_mean(base, tmp_path, out):
    fails(["run", "--data-root", base, "--out", out, "--refiners", "gausian"],
          "unknown refiner 'gausian'", "Did you mean 'gaussian'?", "Known:")


def test_unreadable_image(tree, tmp_path, out):
    root, image, _ = tree
    image.write_bytes(b"\x89PNG garbage, not an image" * 8)
    fails(run_args(root, out), str(image), "not a readable image")


def test_zero_byte_image(tree, tmp_path, out):
    root, image, _ = tree
    image.write_bytes(b"")
    fails(run_args(root, out), str(image), "empty (0 bytes)")


def test_mask_missing_for_an_anomalous_image(tree, tmp_path, out):
    root, image, mask = tree
    mask.unlink()
    fails(run_args(root, out), str(mask), "mask not found", str(image))


def test_mask_of_the_wrong_size(tree, tmp_path, out):
    root, _, mask = tree
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(mask)
    fails(run_args(root, out), str(mask), "mask is 48x32 but its image is 64x64")


def test_non_binary_mask(tree, tmp_path, out):
    root, _, mask = tree
    values = np.zeros((64, 64), np.uint8)
    values[:8], values[8:16] = 128, 255
    Image.fromarray(values).save(mask)
    fails(run_args(root, out), str(mask), "not binary", "expected 0 for normal pixels")


def test_unusual_but_valid_inputs_work(tmp_path, out):
    """Grayscale, gray+alpha and RGBA images (converted to RGB), mixed sizes in one category, a
    category with only normal images and one with only anomalous images: the run finishes, and
    the metrics that the labels do not define are NaN in the store and 'undef' in the tables."""
    root = generate(tmp_path / "syn", seed=2, categories=["tile", "pill"], n_test=18, size=64, progress=False)
    good = sorted((root / "tile" / "test" / "good").glob("*.png"))
    Image.open(good[0]).convert("L").save(good[0])
    Image.open(good[1]).convert("LA").save(good[1])
    Image.open(good[2]).convert("RGBA").save(good[2])
    Image.open(good[3]).resize((80, 96)).save(good[3])  # a larger image in the same category
    anomalous = sorted(p for p in (root / "tile" / "test").rglob("*.png") if p.parent.name != "good")[0]
    mask = root / "tile" / "ground_truth" / anomalous.parent.name / f"{anomalous.stem}_mask.png"
    Image.open(anomalous).convert("L").resize((80, 96)).save(anomalous)
    Image.open(mask).resize((80, 96), Image.NEAREST).save(mask)
    # pill -> "normals" (its good images only) and "anomalies" (its anomalous images only)
    shutil.copytree(root / "pill", root / "anomalies", ignore=lambda d, names: ["good"] if d.endswith("test") else [])
    (root / "pill" / "ground_truth").rename(root / "pill" / "gt_unused")
    for folder in (root / "pill" / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(root / "pill" / "gt_unused")
    (root / "pill").rename(root / "normals")
    (root / "normals" / "ground_truth").mkdir()

    result = invoke(["run", "--data-root", root, "--out", out, "--refiners", "none", "--quiet", "--n-groups", "1", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    run_id = result.output.split("MLflow run ", 1)[1].split()[0]
    units = open_store(out).units(run_id).set_index("category")
    assert sorted(units.index) == ["anomalies", "normals", "tile"]
    normals, anomalies, tile = units.loc["normals"], units.loc["anomalies"], units.loc["tile"]
    for metric in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro"):
        assert math.isnan(normals[metric]), metric  # no anomaly at all: undefined, not 0
    assert math.isnan(anomalies.image_auroc) and 0 < anomalies.pixel_ap <= 1  # one image class, both pixel classes
    assert all(0 <= tile[m] <= 1 for m in ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro"))
    normals_row = next(line for line in result.output.splitlines() if line.startswith("| normals"))
    assert "undef" in normals_row and "0.0" not in normals_row
    table = invoke(["table", "--out", out, "--runs", run_id, "--metric", "image_auroc", "--scope", "stream"])
    assert table.exit_code == 0, table.output
    rows = {line.split("|")[1].strip(): line for line in table.output.splitlines() if line.startswith("| ")}
    assert "undef" in rows["normals"] and "undef" in rows["anomalies"] and "undef" not in rows["tile"]


def test_too_few_images_for_musc_groups(base, tmp_path, out):
    """A trained refiner's synthetic images are scored against their group (see test_bad_options
    for `--refiner none`, which has no such need)."""
    fails(["run", "--data-root", base, "--out", out, "--refiners", "ard", "--quiet", "--no-cache", "--n-groups", "6"],
          "category 'tile' (12 test images)", "a PGT group has only 2 images", "musc", "needs at least",
          "lower pgt.n_groups or raise pgt.group_size")


def test_missing_weights_file(base, tmp_path, out):
    fails(run_args(base, out, "--methods", "musc", "--weights", tmp_path / "missing.pth"),
          f"looked at: {tmp_path / 'missing.pth'}", "weights not found")
    # with --methods all too: weights the user named are never skipped over
    fails(run_args(base, out, "--weights", tmp_path / "missing.pth"), str(tmp_path / "missing.pth"), "not found")


def test_unavailable_device(base, tmp_path, monkeypatch, out):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails(run_args(base, out, "--device", "cuda"), "device='cuda'", "CUDA is not available", "--device cpu")


# ----------------------------------------------------------------------------- options and config


@pytest.mark.parametrize("extra,needles", [
    (["--group-size", "-3"], ["pgt.group_size=-3", "0 (use n_groups) or a positive integer"]),
    (["--contamination", "0,1.5"], ["pgt.contamination", "fractions in [0, 1]"]),
    (["--contamination", "0,lots"], ["--contamination '0,lots'", "expected fractions like 0,0.1,0.2"]),
    (["--set", "pgt.n_groupz=3"], ["unknown config key 'pgt.n_groupz'", "known: ", "n_groups"]),
    (["--set", "pgt.n_groups"], ["invalid --set 'pgt.n_groups'", "expected KEY=VALUE"]),
    (["--set", "pgt.n_groups=[3"], ["invalid --set 'pgt.n_groups=[3'", "not a YAML scalar"]),
    (["--set", "pgt.n_groups=many"], ["pgt.n_groups='many'", "expected int"]),
    (["--set", "pgt=3"], ["pgt=3", "expected a mapping"]),
    (["--set", "refiner_options.none=3"], ["refiner_options", "{refiner: {option: value}}"]),
    (["--set", "method_options.musc.bogus=1"], ["method 'musc'", "bogus", "--set method_options.musc.KEY=VALUE"]),
    (["--set", "method_options.musc.r_list=[2]"], ["method 'musc'", "odd positive integers", "r=2", "method_options.musc"]),
])
def test_bad_option_values(base, tmp_path, extra, needles, out):
    fails(run_args(base, out, *extra), *needles)


def test_unknown_refiner_option(base, tmp_path, out):
    fails(["run", "--data-root", base, "--out", out, "--quiet", "--no-cache", "--n-groups", "2",
           "--refiners", "ard", "--set", "refiner_options.ard.stepz=3"],
          "refiner 'ard'", "unknown ARD option(s) ['stepz']", "known:", "steps")


def test_yaml_config_that_is_not_a_mapping(base, tmp_path, out):
    config = tmp_path / "run.yaml"
    config.write_text("- seed\n- 3\n")
    fails(["run", "--config", config, *run_args(base, out)[1:]], str(config), "must hold a mapping")


def test_yaml_config_with_a_syntax_error(base, tmp_path, out):
    config = tmp_path / "run.yaml"
    config.write_text("pgt: {n_groups: 3\nseed: 1\n")
    fails(["run", "--config", config, *run_args(base, out)[1:]], str(config), "line 2")


def test_output_dir_not_writable(base, tmp_path, out):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    fails(run_args(base, blocker / "out"), f"--out {blocker / 'out'}", "cannot write there", "writable folder")


def test_unsupported_tracking_uri(base, tmp_path, out):
    fails(run_args(base, out, "--tracking-uri", "nosuchscheme://somewhere"),
          "--tracking-uri nosuchscheme://somewhere", "cannot open the MLflow store", "sqlite:///path.db")


def test_damaged_store(base, tmp_path):
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "mlflow.db").write_bytes(b"this is not sqlite" * 100)
    fails(run_args(base, tmp_path / "damaged"), str(tmp_path / "damaged" / "mlflow.db"), "file is not a database",
          "move it away")


def test_table_of_unknown_runs(base, tmp_path, out):
    fails(["table", "--out", out, "--runs", "0123abc"], "no results logged under run(s) 0123abc")


# ----------------------------------------------------------------------------- bench eval


def test_eval_accepts_good_maps(maps, base):
    result = invoke(eval_args(maps, base))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tile"]["pixel_auroc"] == pytest.approx(1.0)


def test_eval_missing_map(maps, base):
    victim = sorted((maps / "tile" / "test" / "good").glob("*.npy"))[0]
    victim.unlink()
    fails(eval_args(maps, base), f"missing map {victim}", "one .npy per test image")


def test_eval_map_with_three_dimensions(maps, base):
    victim = sorted((maps / "tile" / "test" / "good").glob("*.npy"))[0]
    np.save(victim, np.zeros((2, 64, 64), np.float32))
    fails(eval_args(maps, base), str(victim), "expected a 2-D real numeric map", "(2, 64, 64)")


def test_eval_map_with_nan(maps, base):
    victim = sorted((maps / "tile" / "test" / "good").glob("*.npy"))[0]
    values = np.zeros((64, 64), np.float32)
    values[3, 3] = np.nan
    np.save(victim, values)
    fails(eval_args(maps, base), str(victim), "NaN or infinite")


def test_eval_map_that_is_not_npy(maps, base):
    victim = sorted((maps / "tile" / "test" / "good").glob("*.npy"))[0]
    victim.write_bytes(b"garbage")
    fails(eval_args(maps, base), str(victim), "not a .npy file", "numpy.save")


def test_eval_image_scores_with_wrong_columns(maps, base):
    scores = maps / "tile" / "image_scores.csv"
    scores.write_text("file,value\ngood/000,0.1\n")
    fails(eval_args(maps, base), str(scores), "expected the columns image,score", "found file,value")


def test_eval_image_score_not_a_number(maps, base):
    scores = maps / "tile" / "image_scores.csv"
    scores.write_text("image,score\ngood/000,high\n")
    fails(eval_args(maps, base), str(scores), "line 2", "'high' is not a number")


def test_eval_missing_category_folder(maps, base, tmp_path):
    shutil.rmtree(maps / "tile")
    fails(eval_args(maps, base), f"--maps {maps}", "no folder for category 'tile'")


def test_the_console_command_prints_no_traceback(base, tmp_path, out):
    """The installed entry point (``python -m bench``), not only click's test runner."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", *map(str, run_args(base, out, "--categories", "tiel"))],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ") and "Did you mean 'tile'?" in result.stderr
