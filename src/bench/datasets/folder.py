"""Any MVTec-like tree with arbitrary category names (``<root>/<cat>/test/<defect>/<image>``).

Masks are optional, per category: a category with a ``ground_truth/`` folder must give a mask for
every anomalous test image (``ground_truth/<defect>/<stem>_mask.png``); a category with no
``ground_truth/`` folder has no masks at all (``Sample.mask_path`` is None and ``Sample.mask`` is
None for anomalous images). ``has_masks`` is True only when every category has masks; a dataset
(or category) without masks can only be scored with image-level metrics (AUROC, AP, F1-max of the
image scores): pixel metrics need masks.
"""
from __future__ import annotations

from pathlib import Path

from bench.registry import DATASETS

from ._layout import MVTecLikeDataset, looks_mvtec_like

DETECT_SCORE = 10  # the fallback: any more specific loader wins


@DATASETS.register("folder", "generic MVTec-like tree: any category names, masks optional")
class FolderDataset(MVTecLikeDataset):
    """Generic MVTec-like tree; masks optional per category (no ground_truth/ → image metrics only)."""

    name = "folder"
    masks_required = False

    @classmethod
    def detect(cls, root: Path) -> int:
        """A low positive score for any tree with at least one ``<cat>/test`` folder."""
        return DETECT_SCORE if looks_mvtec_like(Path(root)) else 0
