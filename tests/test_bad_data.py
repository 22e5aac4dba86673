"""Issue 17, dataset trees: files that were silently mis-read (16-bit images, duplicate rows or
stems, broken links) are read right or refused with one ``Error:`` line naming them."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from bench.tracking import open_store
from hostile import fails, run_args, run_id, succeeds

METRICS = ["image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro"]


def test_sixteen_bit_images_score_as_their_eight_bit_twins(base, tmp_path, out):
    """16-bit grayscale PNGs decoded as all-white (AUROC 59.8 instead of 96.8 at 8 bit)."""
    eight, sixteen = shutil.copytree(base, tmp_path / "eight"), shutil.copytree(base, tmp_path / "sixteen")
    for image in (eight / "tile" / "test").rglob("*.png"):
        gray = np.asarray(Image.open(image).convert("L"))
        Image.fromarray(gray).save(image)
        Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen / image.relative_to(eight))
    units = [open_store(out).units(run_id(succeeds(run_args(root, out, "--methods", "musc"))))[METRICS]
             for root in (eight, sixteen)]
    assert units[0].equals(units[1]), units


def test_two_images_with_one_stem(tree, out):
    """``000.png`` and ``000.jpg`` shared one mask in `bench run` (and one map in `bench eval`)."""
    root, image, _ = tree
    twin = image.with_suffix(".jpg")
    Image.open(image).convert("RGB").save(twin)
    fails(run_args(root, out, "--methods", "musc"), str(image), str(twin), f"same name stem {image.stem!r}")
    fails(["eval", "--maps", root, "--data-root", root], str(twin), "same name stem")


def test_dangling_link(tree, out):
    root, image, _ = tree
    image.unlink()
    image.symlink_to(image.parent / "elsewhere.png")
    fails(run_args(root, out, "--methods", "musc"), str(image), "symbolic link points to a missing file")


def test_looping_link(tree, out):
    root, image, _ = tree
    image.unlink()
    image.symlink_to(image)
    fails(run_args(root, out, "--methods", "musc"), str(image), "symbolic link loops")


def test_decompression_bomb(tree, out):
    """A small PNG claiming 14000×14000 px: one error, not Pillow's DecompressionBombError."""
    root, image, _ = tree
    Image.new("1", (14000, 14000)).save(image, optimize=True)
    fails(run_args(root, out, "--methods", "musc"), str(image), "refused to decode", "decompression bomb")


def visa_tree(root, duplicate: bool):
    """A VisA tree of one category from the synthetic tiles, one row per image (or one twice);
    anomalous images renamed <defect>_<name>, as VisA's file names are unique in a category."""
    rows = ["object,split,label,image,mask"]
    for image in sorted((root / "tile" / "test").rglob("*.png")):
        if image.parent.name == "good":
            rows.append(f"tile,test,normal,tile/test/good/{image.name},")
        else:
            mask = f"tile/ground_truth/{image.parent.name}/{image.stem}_mask.png"
            image = image.rename(image.with_name(f"{image.parent.name}_{image.name}"))
            rows.append(f"tile,test,anomaly,{image.relative_to(root).as_posix()},{mask}")
    if duplicate:
        rows.append(rows[-1])
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return len(rows)


def test_visa_rows_twice(tree, out):
    """Counted twice: image AUROC 100 -> 0.0, pixel AP 34.9 -> 0.9, no warning."""
    root, _, _ = tree
    n = visa_tree(root, duplicate=True)
    fails(run_args(root, out, "--dataset", "visa", "--methods", "musc"), str(root / "split_csv" / "1cls.csv"),
          f"lines {n - 1} and {n}", "listed twice")


def test_a_visa_row_whose_image_is_its_mask(tree, out):
    """Found in the fifth round: a row giving the mask's path as the image was scored on the mask
    (pixel AUROC 92.9 -> 81.2, AP 28.9 -> 3.9, exit 0)."""
    root, _, mask = tree
    visa_tree(root, duplicate=False)
    split = root / "split_csv" / "1cls.csv"
    lines = split.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.endswith(mask.relative_to(root).as_posix()))
    lines[row] = lines[row].replace(lines[row].split(",")[3], lines[row].split(",")[4])
    split.write_text("\n".join(lines) + "\n")
    fails(run_args(root, out, "--dataset", "visa", "--methods", "musc"), str(split), "the image and the mask are one file",
          str(mask))


def test_file_names_that_are_not_utf8(tree, out):
    """The figure step crashed on such a name after all the compute, leaving the run FAILED."""
    root, _, _ = tree
    for image in list((root / "tile" / "test").rglob("*.png")):
        if image.parent.name == "good":
            continue
        mask = root / "tile" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
        for path, suffix in ((image, ".png"), (mask, "_mask.png")):
            os.rename(path, path.parent / os.fsdecode(b"caf\xe9" + image.stem.encode() + suffix.encode()))
    result = succeeds(run_args(root, out, "--methods", "musc"))
    parent = open_store(out).client.get_run(run_id(result))
    assert parent.info.status == "FINISHED"


def test_a_category_name_that_is_not_utf8(tree, out):
    """Found in the second round: MLflow could not store the unit's tags (a traceback)."""
    root, _, _ = tree
    os.rename(root / "tile", root / os.fsdecode(b"caf\xe9"))
    fails(run_args(root, out, "--methods", "musc"), str(root), "category folder 'caf\ufffd'", "not UTF-8")


def test_a_broken_link_to_a_category_or_defect_folder(tree, tmp_path, out):
    """Found in the second round: the whole category (or defect type) was dropped, exit 0."""
    root, image, _ = tree
    (root / "wood").symlink_to(tmp_path / "gone")
    fails(run_args(root, out, "--methods", "musc"), str(root / "wood"), "symbolic link points to a missing file")
    (root / "wood").unlink()
    (root / "tile" / "test" / "scratch").symlink_to(root / "tile" / "test" / "scratch")
    fails(run_args(root, out, "--methods", "musc"), "scratch", "symbolic link loops")


def test_a_normal_folder_named_in_another_case(tree, out):
    """Found in the second round: test/Good images counted as anomalous (folder layout without masks)."""
    root, _, _ = tree
    shutil.rmtree(root / "tile" / "ground_truth")
    (root / "tile" / "test" / "good").rename(root / "tile" / "test" / "Good")
    fails(run_args(root, out, "--methods", "musc"), str(root / "tile" / "test" / "Good"), "named 'good' exactly")


def test_exif_rotated_images_are_read_as_shown(base, tmp_path, out):
    """Found in the third round: cameras store pixels unrotated with an EXIF orientation tag, and
    masks are drawn on the image as shown; read raw, a square image met its mask turned by 90°
    (pixel AUROC 88.9 -> 48.8, exit 0) and a non-square one was refused as the wrong size."""
    shown = shutil.copytree(base, tmp_path / "shown")
    tagged = shutil.copytree(base, tmp_path / "tagged")
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns the stored pixels 90° clockwise
    for image in (tagged / "tile" / "test").rglob("*.png"):
        Image.open(image).transpose(Image.Transpose.ROTATE_90).save(image, exif=exif.tobytes())
    units = [open_store(out).units(run_id(succeeds(run_args(root, out, "--methods", "musc"))))[METRICS]
             for root in (shown, tagged)]
    assert units[0].equals(units[1]), units


def test_images_in_a_sub_folder_of_a_defect_folder(tree, out):
    """Found in the third round: test/good/batch2/*.png were left out of the test set, exit 0."""
    root, _, _ = tree
    batch = root / "tile" / "test" / "good" / "batch2"
    batch.mkdir()
    for image in sorted((root / "tile" / "test" / "good").glob("*.png"))[:4]:
        image.rename(batch / image.name)
    fails(run_args(root, out, "--methods", "musc"), str(batch), "a folder inside test/good", "left out")


def test_a_normal_folder_named_with_a_trailing_space(tree, out):
    """Found in the third round: test/'good ' images counted as anomalous (folder layout without masks)."""
    root, _, _ = tree
    shutil.rmtree(root / "tile" / "ground_truth")
    (root / "tile" / "test" / "good").rename(root / "tile" / "test" / "good ")
    fails(run_args(root, out, "--methods", "musc"), "'good '", "named 'good' exactly")


@pytest.mark.parametrize("colour", [255, 0])
def test_masks_drawn_on_a_transparent_layer(tree, maps, colour):
    """Found in the third round: white strokes on a transparent layer (RGBA, white everywhere, the
    defect in alpha) made whole images anomalous (pixel AUROC 92.2 -> 50.6 for noisy maps, exit 0).
    Found in a later round: black strokes read as 0, an empty mask (one such mask: pixel AP 84.2 -> 35.5, exit 0)."""
    import json

    root, _, _ = tree
    for mask in (root / "tile" / "ground_truth").rglob("*.png"):
        drawn = np.asarray(Image.open(mask)) > 0
        layer = np.full((*drawn.shape, 4), colour, np.uint8)
        layer[..., 3] = drawn * 255
        Image.fromarray(layer, "RGBA").save(mask)
    got = json.loads(succeeds(["eval", "--maps", maps, "--data-root", root, "--json"]).output)["tile"]
    assert got["pixel_auroc"] == 1.0 and got["pixel_ap"] == 1.0


def test_a_tiff_of_32_bit_integers(tree, out):
    """Found in the fourth round: 8-bit pixels saved as a TIFF of int32 opened as a 16-bit image and
    read nearly black (image AUROC 100 -> 71.9, pixel AP 27.1 -> 10.1, exit 0); such a TIFF is refused."""
    root, image, _ = tree
    tiff = image.with_suffix(".tif")
    Image.open(image).convert("L").convert("I").save(tiff)  # Pillow writes mode I as 32-bit signed integers
    image.unlink()
    fails(run_args(root, out, "--methods", "musc"), str(tiff), "a TIFF of 32-bit signed integers has no 8-bit reading")


def test_an_anomalous_image_with_an_empty_mask_is_named(tree, maps, out):
    """Found in the fourth round: an image under test/<defect>/ whose mask is all zero was accepted
    without a word (anomalous, with no anomalous pixel). Kept (MVTec-style sets may hold such images),
    named in one warning before any work, by `bench run` and `bench eval`."""
    from bench.evaluation import EmptyMaskWarning

    root, _, mask = tree
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    for command in (run_args(root, out, "--methods", "musc"), ["eval", "--maps", maps, "--data-root", root]):
        with pytest.warns(EmptyMaskWarning) as caught:
            succeeds(command)
        named = [str(w.message) for w in caught if w.category is EmptyMaskWarning]
        assert len(named) == 1 and named[0] == f"1 anomalous test image(s) have a mask with no defect pixel " \
                                               f"(labelled anomalous, no anomalous pixel): {mask}", named
