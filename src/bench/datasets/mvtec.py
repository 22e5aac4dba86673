"""MVTec AD (Bergmann et al., CVPR 2019): 15 categories in the MVTec layout, masks for every defect.

Layout and facts: docs/design.md, "Datasets". Grayscale categories (grid, screw, zipper) are converted
to RGB by ``bench.imageio.read_image``; masks are 0/255 PNGs (read strictly: two values only).
A subset of the categories on disk is fine (e.g. only ``bottle/`` downloaded).
"""
from __future__ import annotations

from pathlib import Path

from bench.registry import DATASETS

from ._layout import MVTecLikeDataset, category_dirs

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
    "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
DETECT_SCORE = 100


@DATASETS.register("mvtec", "MVTec AD: 15 categories, <cat>/test/<defect>, <cat>/ground_truth masks")
class MVTecAD(MVTecLikeDataset):
    """MVTec AD: every anomalous test image must have ``ground_truth/<defect>/<stem>_mask.png``."""

    name = "mvtec"
    masks_required = True
    missing_mask_hint = (
        " (MVTec AD ships a mask for every anomalous image; for a tree without masks use the "
        "'folder' dataset)"
    )

    @classmethod
    def detect(cls, root: Path) -> int:
        """High when every category folder is an MVTec AD category with test/ and ground_truth/."""
        root = Path(root)
        try:
            if not root.is_dir():
                return 0
            names = category_dirs(root)
        except OSError:
            return 0
        if not names or not set(names) <= set(MVTEC_CATEGORIES):
            return 0
        if not all((root / n / "test").is_dir() for n in names):
            return 0
        if not any((root / n / "ground_truth").is_dir() for n in names):
            return 0
        return DETECT_SCORE
