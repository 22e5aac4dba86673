"""Shared scanning of MVTec-like trees (used by the ``mvtec``, ``folder`` and ``synthetic`` loaders).

The layout (MVTec AD's, DESIGN.md section 11)::

    <root>/<category>/train/good/<image>                      normal training images (optional)
    <root>/<category>/test/<defect>/<image>                   test images; <defect> "good" = normal
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   one mask per anomalous test image

Image files are recognised by their extension (png, jpg, jpeg, bmp, tif, tiff; any case); hidden
files and folders (and folders starting with ``_``) are ignored. A mask may also be named
``<stem>.png`` (or another image extension) when ``<stem>_mask.*`` does not exist.

Only the structure is checked here (folders, file names, masks present). Pixels are read lazily by
``Sample.image`` / ``Sample.mask``, which check size and binarity; ``bench.data.check_dataset``
forces that for a whole dataset.
"""
from __future__ import annotations

import difflib
import errno
from dataclasses import dataclass
from pathlib import Path

from bench.errors import DatasetError
from bench.interfaces import Dataset
from bench.records import Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")  # all decoded by Pillow
GOOD = "good"
LAYOUT_HELP = (
    "expected an MVTec-like tree: <root>/<category>/test/<defect>/<image> "
    "(normal images in test/good), optional <root>/<category>/train/good/<image>, and masks "
    "<root>/<category>/ground_truth/<defect>/<stem>_mask.png"
)


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def check_link(path: Path) -> None:
    """A DatasetError naming ``path`` when it is a symbolic link that leads nowhere or loops
    (``is_file`` is False for both, which would drop the image silently)."""
    if not path.is_symlink():
        return
    try:
        path.stat()
    except OSError as exc:
        why = "loops" if getattr(exc, "errno", None) == errno.ELOOP else "points to a missing file"
        raise DatasetError(f"{path}: symbolic link {why} (-> {path.readlink()}); fix or remove it") from None


def require_unique_stems(paths: list[Path], what: str = "images") -> None:
    """A DatasetError naming both files when two ``paths`` share a stem (``000.png``, ``000.jpg``):
    masks and maps are matched by stem, so they would share one."""
    seen: dict[str, Path] = {}
    for path in paths:
        first = seen.setdefault(path.stem, path)
        if first is not path:
            raise DatasetError(f"{first} and {path}: two {what} with the same name stem {path.stem!r} in one "
                               "folder; masks and maps are matched by stem, so keep only one of them")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; [] when the folder does not exist.

    A broken or looping symbolic link, and two files that share a stem, are DatasetErrors."""
    if not folder.is_dir():
        return []
    names = sorted((p for p in folder.iterdir() if is_image_name(p)), key=lambda p: p.name)
    for path in names:
        check_link(path)
    images = [p for p in names if p.is_file()]
    require_unique_stems(images)
    return images


def require_root(root: Path | str) -> Path:
    """``root`` as a Path, or a DatasetError when it is missing or not a folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset root not found; expected a folder holding the dataset")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a folder; expected a folder holding the dataset")
    return root


def subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``; a broken or looping link among them is an error
    (it would drop a whole category or defect type silently)."""
    entries = [p for p in folder.iterdir() if _visible(p)]
    for path in entries:
        check_link(path)
    return [p for p in entries if p.is_dir()]


def category_dirs(root: Path) -> list[str]:
    """Names of the visible sub-folders of ``root``, sorted; a name that is not UTF-8 is an error
    (categories are labels in the store and the tables)."""
    names = sorted(p.name for p in subfolders(root))
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise DatasetError(f"{root}: category folder {shown!r} has a name that is not UTF-8; rename it") from None
    return names


def unknown_category_error(name: str, known: list[str], where: Path) -> DatasetError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return DatasetError(f"{where}: unknown category {name!r}.{hint} Known: {', '.join(known)}.")


def looks_mvtec_like(root: Path) -> bool:
    """At least one ``<root>/<category>/test`` folder (cheap; used by ``detect``)."""
    try:
        return root.is_dir() and any((root / c / "test").is_dir() for c in category_dirs(root))
    except OSError:
        return False


@dataclass(frozen=True)
class ScannedImage:
    path: Path
    defect: str
    mask_path: Path | None

    @property
    def label(self) -> int:
        return 0 if self.defect == GOOD else 1


def _mask_index(folder: Path) -> dict[str, Path]:
    """stem → mask file in a ground-truth folder; ``<stem>_mask.*`` wins over ``<stem>.*``."""
    index: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    for p in list_images(folder):
        if p.stem.endswith("_mask"):
            index.setdefault(p.stem[: -len("_mask")], p)
        else:
            plain.setdefault(p.stem, p)
    for stem, p in plain.items():
        index.setdefault(stem, p)
    return index


def scan_test(root: Path, category: str, masks: bool, hint: str = "") -> list[ScannedImage]:
    """The test images of one category, sorted by (defect, name) with "good" first.

    ``masks``: every anomalous image must have its mask (DatasetError naming the expected path);
    otherwise ``mask_path`` is None for all images.
    """
    cat_dir = root / category
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir}: category {category!r} has no test/ folder; {LAYOUT_HELP}")
    defects = sorted((p.name for p in subfolders(test_dir)), key=lambda d: (d != GOOD, d))
    for defect in defects:
        if defect.strip().lower() == GOOD and defect != GOOD:
            raise DatasetError(f"{test_dir / defect}: the folder of normal images must be named {GOOD!r} exactly "
                               f"(as {defect!r}, its images would count as anomalous); rename it")
        nested = subfolders(test_dir / defect)
        if nested:
            raise DatasetError(f"{nested[0]}: a folder inside test/{defect}; images are read from test/<defect>/ "
                               "only, so its images would be left out; move them up a level or remove it")
    entries: list[ScannedImage] = []
    for defect in defects:
        images = list_images(test_dir / defect)
        if not images:
            continue
        index = _mask_index(cat_dir / "ground_truth" / defect) if masks and defect != GOOD else {}
        for image in images:
            mask = None
            if masks and defect != GOOD:
                mask = index.get(image.stem)
                if mask is None:
                    expected = cat_dir / "ground_truth" / defect / f"{image.stem}_mask.png"
                    raise DatasetError(
                        f"{expected}: mask not found for the anomalous image {image}; "
                        f"expected one mask per image in test/{defect}{hint}"
                    )
            entries.append(ScannedImage(image, defect, mask))
    if not entries:
        raise DatasetError(
            f"{test_dir}: no test images in category {category!r} (extensions "
            f"{', '.join(IMAGE_SUFFIXES)}); {LAYOUT_HELP}"
        )
    return entries


class MVTecLikeDataset(Dataset):
    """Base class of the loaders of MVTec-like trees.

    ``masks_required`` (class attribute): every category must provide masks for its anomalous
    images (MVTec AD). Otherwise a category without any ``ground_truth/`` folder has no masks
    (``Sample.mask_path`` None, so ``Sample.mask`` is None for anomalous images), and the dataset's
    ``has_masks`` is True only when every category has masks: without them only image-level
    metrics can be computed.
    """

    name = "mvtec-like"
    masks_required: bool = True
    missing_mask_hint: str = ""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root = require_root(root)
        names = category_dirs(self.root)
        if not names:
            raise DatasetError(f"{self.root}: no category folders found; {LAYOUT_HELP}")
        for name in names:
            if not (self.root / name / "test").is_dir():
                raise DatasetError(
                    f"{self.root / name / 'test'}: category {name!r} has no test/ folder; {LAYOUT_HELP}"
                )
        self._categories = names
        self._category_masks = {
            n: self.masks_required or (self.root / n / "ground_truth").is_dir() for n in names
        }
        self.has_masks = all(self._category_masks.values())
        self._scans: dict[str, list[ScannedImage]] = {}

    def categories(self) -> list[str]:
        return list(self._categories)

    def _require(self, category: str) -> None:
        if category not in self._category_masks:
            raise unknown_category_error(category, self._categories, self.root)

    def category_has_masks(self, category: str) -> bool:
        self._require(category)
        return self._category_masks[category]

    def test(self, category: str) -> list[Sample]:
        """Fresh Sample objects each call (pixels are cached on the Sample, not on the dataset)."""
        self._require(category)
        if category not in self._scans:
            self._scans[category] = scan_test(
                self.root, category, self._category_masks[category], self.missing_mask_hint
            )
        return [Sample(e.path, e.label, e.defect, category, e.mask_path) for e in self._scans[category]]

    def train_good(self, category: str) -> list[Path]:
        self._require(category)
        return list_images(self.root / category / "train" / GOOD)
