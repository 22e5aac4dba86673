"""Issue 17, `bench eval`: maps are scored at their own precision, and a map or option that would
give wrong numbers (wrong shape, empty, complex, out-of-range options) is one ``Error:`` line."""
import json
import shutil

import numpy as np
import pytest

from hostile import eval_args, fails, succeeds


def first_good(maps):
    return sorted((maps / "tile" / "test" / "good").glob("*.npy"))[0]


def scores(maps, base, *extra) -> dict:
    return json.loads(succeeds(eval_args(maps, base, *extra)).output)["tile"]


def test_float64_maps_keep_their_precision(maps, base):
    """Maps differing by 1e-9 scored AUROC 0.5 once cast to float32; they separate perfectly."""
    for path in maps.rglob("*.npy"):
        np.save(path, 0.5 + 1e-9 * np.load(path).astype(np.float64))
    got = scores(maps, base)
    assert got["pixel_auroc"] == pytest.approx(1.0) and got["pixel_ap"] == pytest.approx(1.0)
    assert got["image_auroc"] == pytest.approx(1.0)


def test_float64_values_beyond_float32(maps, base):
    for path in maps.rglob("*.npy"):
        np.save(path, 1e300 * np.load(path).astype(np.float64))
    assert scores(maps, base)["pixel_auroc"] == pytest.approx(1.0)


def test_square_and_same_aspect_maps_are_resized(maps, base):
    """A square map (from a square network input) and a map at a lower resolution are both fine."""
    np.save(first_good(maps), np.zeros((16, 16), np.float32))
    assert scores(maps, base)["pixel_auroc"] == pytest.approx(1.0)


def test_map_with_another_aspect_ratio(maps, base):
    victim = first_good(maps)
    np.save(victim, np.zeros((32, 64), np.float32))
    fails(eval_args(maps, base), str(victim), "map is 64x32 but its image is 64x64", "aspect ratio")


@pytest.mark.parametrize("value,needle", [
    (np.zeros((0, 0), np.float32), "the map is empty"),
    (np.zeros((64, 64), np.complex64), "expected a 2-D real numeric map"),
    (np.full((64, 64), np.inf), "NaN or infinite"),
])
def test_maps_that_cannot_be_scored_name_the_file(maps, base, value, needle):
    victim = first_good(maps)
    np.save(victim, value)
    fails(eval_args(maps, base), str(victim), needle)


@pytest.mark.parametrize("extra,needle", [
    (["--mask-threshold", "1.5"], "--mask-threshold 1.5: must be in (0, 1)"),  # every pixel metric was null
    (["--mask-threshold", "0"], "--mask-threshold 0.0: must be in (0, 1)"),
    (["--eval-size", "0"], "--eval-size 0: must be a positive integer"),
    (["--eval-size", "-5"], "--eval-size -5: must be a positive integer"),
])
def test_bad_eval_options(maps, base, extra, needle):
    fails(eval_args(maps, base, *extra), needle)


def test_an_image_scored_twice(maps, base):
    """Found in the second round: the later row won silently."""
    scores_file = maps / "tile" / "image_scores.csv"
    scores_file.write_text("image,score\ngood/000,0.1\ngood/000,0.9\n")
    fails(eval_args(maps, base), str(scores_file), "lines 2 and 3", "scored twice")


def test_an_eval_size_beyond_memory_is_one_error_line(maps, base):
    """A side of 10^7 pixels asks for ~10^14 bytes per map: one Error line, no MemoryError traceback."""
    fails(eval_args(maps, base, "--eval-size", "10000000"), "out of memory", "--eval-size")


def test_image_scores_saved_with_a_byte_order_mark(maps, base):
    """Found in the third round: a spreadsheet's UTF-8 export was refused as lacking the column 'image'."""
    rows = [f"{p.parent.name}/{p.stem},{int(p.parent.name != 'good')}" for p in (maps / "tile" / "test").rglob("*.npy")]
    (maps / "tile" / "image_scores.csv").write_text("\ufeffimage,score\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert scores(maps, base)["image_auroc"] == pytest.approx(1.0)


def test_pixel_metrics_of_a_category_with_masks_next_to_one_without(maps, base, tmp_path):
    """Found in the third round: one category without ground_truth/ dropped every category's pixel metrics."""
    root = shutil.copytree(base, tmp_path / "tree")
    shutil.copytree(root / "tile" / "test", root / "plain" / "test")  # no ground_truth/: image metrics only
    shutil.copytree(maps / "tile", maps / "plain")
    got = json.loads(succeeds(eval_args(maps, root, "--dataset", "folder")).output)
    assert got["tile"]["pixel_auroc"] == pytest.approx(1.0) and "pixel_auroc" not in got["plain"]
    assert set(got["mean"]) == set(got["plain"])  # the mean of what every category has


def test_external_maps_of_another_aspect_ratio(maps, base, tmp_path):
    """Found in the third round: `bench run --methods external` stretched a transposed map onto its
    image (pixel AUROC 96.9 -> 44.6, exit 0) where `bench eval` refuses it."""
    from PIL import Image

    from hostile import run_args

    root = shutil.copytree(base, tmp_path / "tree")
    image = sorted((root / "tile" / "test" / "good").glob("*.png"))[0]
    Image.open(image).resize((64, 40)).save(image)  # 64 wide, 40 high
    victim = first_good(maps)
    np.save(victim, np.zeros((64, 40), np.float32))  # 40 wide, 64 high
    fails(run_args(root, tmp_path / "out", "--methods", "external", "--set",
                   f"method_options.external.maps_dir={maps}"), str(victim), "map is 40x64 but its image is 64x40")


def test_maps_of_one_category_mixing_uint8_and_float(maps, base, tmp_path):
    """Found in the fourth round: half the maps as uint8 0..255, half as float 0..1, were pooled as
    one scale (pixel AUROC 93.6 -> 71.3, exit 0); the same in `bench run --methods external`."""
    from hostile import run_args

    for path in maps.rglob("*.npy"):
        np.save(path, (np.load(path) * 255).astype(np.uint8))
    assert scores(maps, base)["pixel_auroc"] == pytest.approx(1.0)  # all uint8 is one scale
    victim = first_good(maps)
    np.save(victim, np.load(victim).astype(np.float32) / 255)
    fails(eval_args(maps, base), str(victim), "(floating point)", "(uint8)", "mix value types")
    fails(run_args(base, tmp_path / "out", "--methods", "external", "--set",
                   f"method_options.external.maps_dir={maps}"), "(floating point)", "(uint8)", "mix value types")


def test_maps_and_score_rows_that_match_no_image_are_named(maps, base):
    """Found in the fourth round: map files that match no test image (another name or defect folder),
    CSV rows of unknown images and a folder of an unknown category were ignored silently; each kind is
    one warning naming the first few and their count, and the scores are those of the matching maps."""
    from bench.evaluation import UnusedInputWarning

    expected = scores(maps, base)
    victim = first_good(maps)
    strays = [victim.parent / f"stray{i}.npy" for i in range(4)] + [maps / "tile" / "test" / "typo" / victim.name]
    for stray in strays:
        stray.parent.mkdir(exist_ok=True)
        shutil.copy(victim, stray)
    (maps / "Tile").mkdir()
    rows = [f"{p.parent.name}/{p.stem},{int(p.parent.name != 'good')}" for p in (maps / "tile" / "test").rglob("*.npy")]
    (maps / "tile" / "image_scores.csv").write_text("image,score\n" + "\n".join(rows) + "\n")
    with pytest.warns(UnusedInputWarning) as caught:
        got = scores(maps, base)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3, messages
    assert messages[0].startswith("1 folder(s) of --maps name no category") and str(maps / "Tile") in messages[0]
    assert messages[1].startswith("5 map file(s) match no test image") and "(and 2 more)" in messages[1]
    assert str(strays[0]) in messages[1]
    assert messages[2].startswith(f"5 row(s) of {maps / 'tile' / 'image_scores.csv'} name no test image")
    assert messages[2].endswith("ignored: good/stray0, good/stray1, good/stray2 (and 2 more)")
    assert got["pixel_auroc"] == expected["pixel_auroc"] and got["image_auroc"] == pytest.approx(1.0)


def test_masks_that_vanish_at_the_evaluation_size_are_named(maps, base, recwarn):
    """Found in the fifth round: at `--eval-size 1` every pixel metric was null and at 8 two anomalous
    images added no defect pixel, with no word (their defects are smaller than a pixel there)."""
    succeeds(eval_args(maps, base, "--eval-size", 8))
    named = [str(w.message) for w in recwarn if "no defect pixel once resized" in str(w.message)]
    assert len(named) == 1 and named[0].startswith("2 mask(s)") and "evaluation size 8" in named[0], named
    assert named[0].count("_mask.png") == 2
    recwarn.clear()
    succeeds(eval_args(maps, base, "--eval-size", 64))
    assert not [w for w in recwarn if "no defect pixel once resized" in str(w.message)]
