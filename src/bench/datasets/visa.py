"""VisA (Zou et al., ECCV 2022) through its one-class split file ``split_csv/1cls.csv``.

The csv has the columns ``object, split, label, image, mask``: ``split`` is ``train`` or ``test``,
``label`` is ``normal`` or ``anomaly``, ``image`` and ``mask`` are paths relative to the root
(e.g. ``candle/Data/Images/Anomaly/000.JPG`` and ``candle/Data/Masks/Anomaly/000.png``), and
``mask`` is empty for normal rows. VisA masks store defect labels (0 = normal, 1..k = defect
instances), so they are read with ``strict=False`` and binarised with ``> 0`` (DESIGN.md
section 11). The ``defect`` of a Sample is ``"anomaly"`` for anomalous images and ``"good"`` for
normal ones (the csv has no defect types).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from bench.errors import DatasetError
from bench.interfaces import Dataset
from bench.records import Sample
from bench.registry import DATASETS

from ._layout import check_link, require_root, unknown_category_error

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
SPLITS = ("train", "test")
DETECT_SCORE = 200


@dataclass(frozen=True)
class _Row:
    line: int
    object: str
    split: str
    label: int
    image: str
    mask: str


@DATASETS.register("visa", "VisA: split_csv/1cls.csv (12 categories, label masks)")
class VisA(Dataset):
    """VisA read from ``<root>/split_csv/1cls.csv``; test = split 'test', train_good = normal 'train'."""

    name = "visa"
    has_masks = True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root = require_root(root)
        self.csv_path = self.root / SPLIT_CSV
        if not self.csv_path.is_file():
            raise DatasetError(
                f"{self.csv_path}: VisA split file not found; expected the one-class split "
                f"<root>/{SPLIT_CSV.as_posix()} with columns {', '.join(COLUMNS)} (from the VisA release)"
            )
        self._rows = self._read_csv()
        self._categories = sorted({r.object for r in self._rows})
        if not self._categories:
            raise DatasetError(f"{self.csv_path}: no rows; expected one row per image")

    @classmethod
    def detect(cls, root: Path) -> int:
        """High when ``<root>/split_csv/1cls.csv`` exists."""
        try:
            return DETECT_SCORE if (Path(root) / SPLIT_CSV).is_file() else 0
        except OSError:
            return 0

    def _read_csv(self) -> list[_Row]:
        where = self.csv_path
        try:
            with open(where, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                header = [h.strip() for h in (reader.fieldnames or [])]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise DatasetError(
                        f"{where}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(header) or 'no header'}; expected columns {', '.join(COLUMNS)}"
                    )
                reader.fieldnames = header
                rows = []
                for raw in reader:
                    line = reader.line_num
                    values = {c: (raw.get(c) or "").strip() for c in COLUMNS}
                    label = values["label"].lower()
                    if label not in LABELS:
                        raise DatasetError(
                            f"{where}, line {line}: label {values['label']!r}; expected 'normal' or 'anomaly'"
                        )
                    split = values["split"].lower()
                    if split not in SPLITS:
                        raise DatasetError(
                            f"{where}, line {line}: split {values['split']!r}; expected 'train' or 'test'"
                        )
                    if not values["object"] or not values["image"]:
                        raise DatasetError(f"{where}, line {line}: empty 'object' or 'image' field")
                    rows.append(_Row(line, values["object"], split, LABELS[label], values["image"], values["mask"]))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: not a text csv file ({exc})") from None
        except csv.Error as exc:
            raise DatasetError(f"{where}: malformed csv ({exc})") from None
        self._require_unique(rows)
        return rows

    def _require_unique(self, rows: list[_Row]) -> None:
        """Each image once: a repeated row would count an image twice in its metrics."""
        first: dict[str, _Row] = {}
        for row in rows:
            image = Path(row.image).as_posix()  # "a//b" and "./a/b" are "a/b"
            seen = first.setdefault(image, row)
            if seen is not row:
                raise DatasetError(f"{self.csv_path}, lines {seen.line} and {row.line}: image {image} is listed "
                                   "twice; expected one row per image")

    def categories(self) -> list[str]:
        return list(self._categories)

    def _require(self, category: str) -> None:
        if category not in self._categories:
            raise unknown_category_error(category, self._categories, self.csv_path)

    def _file(self, row: _Row, value: str, what: str) -> Path:
        path = self.root / value
        check_link(path)
        if not path.is_file():
            raise DatasetError(
                f"{self.csv_path}, line {row.line} ({row.object}, {row.split}, "
                f"{'anomaly' if row.label else 'normal'}): {what} file {path} not found"
            )
        return path

    def test(self, category: str) -> list[Sample]:
        """Normal images first, then anomalous ones, each sorted by path; fresh Samples each call."""
        self._require(category)
        samples = []
        for row in self._rows:
            if row.object != category or row.split != "test":
                continue
            image = self._file(row, row.image, "image")
            mask = None
            if row.label:
                if not row.mask:
                    raise DatasetError(
                        f"{self.csv_path}, line {row.line} ({row.object}, test, anomaly): the mask "
                        f"field is empty for the anomalous image {image}; expected its mask path"
                    )
                mask = self._file(row, row.mask, "mask")
                if mask.resolve() == image.resolve():
                    raise DatasetError(f"{self.csv_path}, line {row.line} ({row.object}, test, anomaly): the image "
                                       f"and the mask are one file, {image}; expected the image in 'image' and its "
                                       "mask in 'mask'")
            samples.append(
                Sample(image, row.label, "anomaly" if row.label else "good", category, mask, mask_strict=False)
            )
        if not samples:
            raise DatasetError(
                f"{self.csv_path}: category {category!r} has no rows with split 'test'; "
                "expected its test images"
            )
        samples.sort(key=lambda s: (s.label, str(s.path)))
        keys: dict[str, Sample] = {}
        for sample in samples:
            other = keys.setdefault(sample.key, sample)
            if other is not sample:
                raise DatasetError(f"{self.csv_path}: test images {other.path} and {sample.path} of category "
                                   f"{category!r} share the key {sample.key!r} (label and file stem); maps are "
                                   "matched by it, so rename one of them")
        return samples

    def train_good(self, category: str) -> list[Path]:
        self._require(category)
        return sorted(
            self._file(row, row.image, "image")
            for row in self._rows
            if row.object == category and row.split == "train" and row.label == 0
        )
