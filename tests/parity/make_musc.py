"""Make ``fixtures/musc.npz``: the official MuSc code on the parity recipe (CPU, offline).

Usage: ``PYTHONPATH=<site with cv2, openpyxl, ftfy, timm> python tests/parity/make_musc.py
<MuSc checkout> [--out tests/parity/fixtures/musc.npz]`` (github.com/xrli-U/MuSc; made at
b76b93da). Nothing of the checkout is copied: its ``MuSc`` class runs as published
(``make_category_data``: its open_clip build, LNAMD, MSM, interpolation, max, RsCIN) on the
recipe's images with the recipe's weights; only the data source and the metrics call are
replaced, to feed the images in memory and to catch the maps and scores the metrics receive.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402
from official_env import script_args  # noqa: E402


def main() -> None:
    args = script_args(__doc__, "musc", "b76b93da8bd3096a99964a96ae29d46f197a0651")
    root = args.checkout
    sys.path[:0] = [str(root), str(root / "models" / "backbone")]
    caught: dict[str, np.ndarray] = {}

    def compute_metrics(gt_sp, pr_sp, gt_px, pr_px):  # replaces utils.metrics (scikit-image)
        caught["image_scores"], caught["maps"] = np.asarray(pr_sp), np.asarray(pr_px)
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)

    sys.modules["utils.metrics"] = types.SimpleNamespace(compute_metrics=compute_metrics)
    import models.musc as official
    from models.backbone.open_clip import factory

    factory._MODEL_CONFIGS[recipe.ARCH] = recipe.CONFIG
    rscin = official.RsCIN

    def catch_rscin(scores_old, cls_tokens=None, k_list=(0,)):
        caught["max_scores"], caught["embeddings"] = np.asarray(scores_old), np.asarray(cls_tokens)
        return rscin(scores_old, cls_tokens, k_list)

    official.RsCIN = catch_rscin
    cfg = {
        "datasets": {"dataset_name": "mvtec_ad", "data_path": "", "class_name": "bottle",
                     "img_resize": recipe.IMAGE_SIZE, "divide_num": 1},
        "models": {"backbone_name": recipe.ARCH, "pretrained": None, "batch_size": 4,
                   "feature_layers": [5, 11, 17, 23], "r_list": [1, 3, 5]},
        "device": 0,
        "testing": {"output_dir": "/tmp/musc-parity", "vis": False, "vis_type": "single_norm", "save_excel": False},
    }
    musc = official.MuSc(cfg)
    model = musc.clip_model
    model.load_state_dict(recipe.random_state_dict(recipe.shapes_of(model)), strict=True)
    items = [
        {"image": musc.preprocess(PIL.Image.fromarray(img)), "image_path": f"img{i}",
         "mask": torch.zeros(1, recipe.IMAGE_SIZE, recipe.IMAGE_SIZE), "is_anomaly": int(i in (1, 4))}
        for i, img in enumerate(recipe.images())
    ]
    musc.load_datasets = lambda *a, **k: items
    musc.make_category_data("bottle")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        maps=caught["maps"][:, 0].astype(np.float32),
        max_scores=caught["max_scores"].astype(np.float64),
        image_scores=caught["image_scores"].astype(np.float64),
        embeddings=caught["embeddings"].astype(np.float32),
        keys=np.array(sorted(recipe.shapes_of(model))),
        source=np.array(f"xrli-U/MuSc@{args.commit}"),
    )
    print(f"wrote {args.out}: maps {caught['maps'].shape}, scores {caught['image_scores']}")


if __name__ == "__main__":
    main()
