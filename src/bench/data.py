"""Opening a dataset tree, choosing categories, and checking every file before a long run.

``open_dataset`` finds the loader (``bench.registry.DATASETS``) whose ``detect`` scores the tree
highest, or uses the one named; ``select_categories`` turns a ``--categories`` spec into names;
``check_dataset`` reads every test image and mask once and summarises each category.
"""
from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from bench.errors import DatasetError
from bench.interfaces import Dataset
from bench.registry import DATASETS, UnknownNameError

LAYOUTS_LOOKED_FOR = (
    "MVTec AD (<root>/<category>/test/<defect>/*.png with ground_truth/ masks)",
    "VisA (<root>/split_csv/1cls.csv)",
    "generic MVTec-like folder (<root>/<category>/test/<defect>/<image>, masks optional)",
    "the embedded synthetic dataset (<root>/synthetic.json)",
)


def detect_scores(root: Path) -> dict[str, int]:
    """Each registered dataset's ``detect`` score for ``root``."""
    return {name: int(DATASETS.entry(name).factory.detect(Path(root))) for name in DATASETS.names()}


def read_json_marker(root: Path, filename: str, generator: str) -> dict | None:
    """The JSON marker ``<root>/<filename>`` written by ``generator`` (its field "generator"), or None."""
    try:
        info = json.loads((Path(root) / filename).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == generator else None


def open_dataset(root: Path, name: str | None = None) -> Dataset:
    """The dataset at ``root``: loader ``name``, or (None) the one whose ``detect`` scores highest."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset root not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a folder")
    if name is None:
        scores = detect_scores(root)
        best = max(scores.values(), default=0)
        if best <= 0:
            raise DatasetError(
                f"{root}: no known dataset layout found. Looked for: "
                + "; ".join(LAYOUTS_LOOKED_FOR)
                + "."
            )
        name = min(n for n, s in scores.items() if s == best)  # ties: alphabetical, deterministic
    try:
        entry = DATASETS.entry(name)
    except UnknownNameError as exc:
        raise DatasetError(str(exc)) from None
    dataset = entry.factory(root=root)
    if not getattr(dataset, "name", None) or dataset.name != name:
        dataset.name = name
    return dataset


def select_categories(dataset: Dataset, spec: str | None) -> list[str]:
    """``None`` / ``"all"`` → every category; ``"a,b"`` → those, validated, in the given order."""
    return choose_categories(dataset.categories(), spec, str(dataset.root))


def choose_categories(known: list[str], spec: str | None, where: str) -> list[str]:
    """``select_categories`` on a list of ``known`` names; errors start with ``where``."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(known)
    chosen: list[str] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name or name in chosen:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DatasetError(f"{where}: unknown category {name!r}.{hint} Known: {', '.join(known)}.")
        chosen.append(name)
    if not chosen:
        raise DatasetError(f"{where}: no category in {spec!r}. Known: {', '.join(known)}.")
    return chosen


def check_dataset(dataset: Dataset, categories: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Read every test image and mask of ``categories``; one summary dict per category.

    Each dict: ``category, n_test, n_good, n_anomalous, defects`` ({defect: count}), ``sizes``
    (sorted ``"WxH"`` strings), ``has_masks``, ``n_train_good``, ``n_empty_masks`` (anomalous images
    whose mask has no foreground pixel) and ``warning`` (None, or why the category cannot give
    every metric: only normal or only anomalous images, empty masks). A bad file raises
    DatasetError naming it (the first one found).
    """
    if categories is None:
        categories = dataset.categories()
    per_category = [(c, dataset.test(c)) for c in categories]
    total = sum(len(s) for _, s in per_category)
    summaries = []
    with tqdm(total=total, desc="checking images", unit="img", disable=not progress) as bar:
        for category, samples in per_category:
            has_masks = dataset.category_has_masks(category)
            sizes: set[tuple[int, int]] = set()
            n_empty = 0
            for sample in samples:
                image = sample.image
                if image.ndim != 3 or image.shape[2] != 3:
                    raise DatasetError(f"{sample.path}: decoded to shape {image.shape}; expected H×W×3")
                sizes.add((image.shape[1], image.shape[0]))
                mask = sample.mask
                if sample.label == 1 and mask is not None and not mask.any():
                    n_empty += 1
                # free the pixels: the Sample caches them and a dataset can be tens of GB
                for attr in ("image", "mask"):
                    sample.__dict__.pop(attr, None)
                bar.update(1)
            defects = Counter(s.defect for s in samples)
            n_anomalous = sum(s.label for s in samples)
            n_good = len(samples) - n_anomalous
            warnings = []
            if n_anomalous == 0:
                warnings.append("only normal images: AUROC/AP cannot be computed for this category")
            elif n_good == 0:
                warnings.append("only anomalous images: image-level AUROC cannot be computed for this category")
            if has_masks and n_empty:
                warnings.append(f"{n_empty} anomalous image(s) with an empty mask")
            if not has_masks:
                warnings.append("no masks: image-level metrics only")
            summaries.append(
                {
                    "category": category,
                    "n_test": len(samples),
                    "n_good": n_good,
                    "n_anomalous": n_anomalous,
                    "defects": dict(sorted(defects.items(), key=lambda kv: (kv[0] != "good", kv[0]))),
                    "sizes": [f"{w}x{h}" for w, h in sorted(sizes)],
                    "has_masks": has_masks,
                    "n_train_good": len(dataset.train_good(category)),
                    "n_empty_masks": n_empty,
                    "warning": "; ".join(warnings) or None,
                }
            )
    return summaries
