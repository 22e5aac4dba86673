"""Make ``fixtures/aprilgan.npz``: the official APRIL-GAN zero-shot test on the parity recipe (CPU, offline).

Usage: ``PYTHONPATH=<site with cv2> python tests/parity/make_aprilgan.py <VAND-APRIL-GAN checkout>
[--out tests/parity/fixtures/aprilgan.npz]`` (github.com/ByChelsea/VAND-APRIL-GAN; made at
f13b8a63). Nothing of the checkout is copied: its ``test.test(args)`` runs as published
(``--mode zero_shot``, features 6 12 18 24, its open_clip build from the model config, its prompt
ensemble, its ``LinearLayer`` loaded from a checkpoint file in its own format) on the recipe's
images, weights and adapters. Replaced: the dataset class, ``pkg_resources`` (imported, unused), the
device of an unused attention sum that its ViT puts on ``'cuda'`` by name (CPU only) (the images in memory), the weight
download (the recipe's weights are loaded instead), scikit-image's PRO (not needed), and
``roc_auc_score``, which catches the maps and image scores the metrics receive.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import PIL.Image
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402
from official_env import import_script, script_args  # noqa: E402

LAYERS = [6, 12, 18, 24]
CATEGORY = "bottle"


def masks() -> list[np.ndarray]:
    """Ground truth for the metrics the official test computes (the bright squares, roughly)."""
    return [(np.asarray(img).min(axis=-1) >= 245).astype(np.float32) for img in recipe.images()]


def main() -> None:
    args = script_args(__doc__, "aprilgan", "f13b8a634e04f9fde8fa03db125b25af5695d8e1")
    sys.modules["skimage"] = types.SimpleNamespace(measure=None)  # only its PRO uses it
    official = import_script(args.checkout, "test.py", "aprilgan_test")
    import open_clip  # the checkout's copy (imported by test.py above)

    open_clip.factory._MODEL_CONFIGS[recipe.ARCH] = recipe.CONFIG
    work = Path(tempfile.mkdtemp(prefix="aprilgan-parity-"))
    config_path = work / "config.json"
    config_path.write_text(json.dumps(recipe.CONFIG))
    checkpoint = work / "adapters.pth"
    torch.save({"trainable_linearlayer": recipe.linear_adapters(len(LAYERS))}, checkpoint)

    build = official.open_clip.create_model_and_transforms

    def create_model_and_transforms(name, img_size, pretrained=None):
        model, train, preprocess = build(name, img_size, pretrained=None)
        model.load_state_dict(recipe.random_state_dict(recipe.shapes_of(model)), strict=True)
        return model, train, preprocess

    official.open_clip = types.SimpleNamespace(create_model_and_transforms=create_model_and_transforms,
                                               get_tokenizer=open_clip.get_tokenizer)
    paths = []
    for i, img in enumerate(recipe.images()):
        path = work / CATEGORY / ("broken" if i in (1, 4) else "good") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(img).save(path)
        paths.append(path)

    class Dataset(torch.utils.data.Dataset):  # replaces MVTecDataset: the recipe's images
        def __init__(self, root, transform, target_transform, aug_rate, mode="test", **_):
            self.transform = transform

        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return {"img": self.transform(PIL.Image.open(paths[i]).convert("RGB")), "cls_name": CATEGORY,
                    "img_mask": torch.as_tensor(masks()[i])[None], "anomaly": int(i in (1, 4)),
                    "img_path": str(paths[i])}

        def get_cls_names(self):
            return [CATEGORY]

    official.MVTecDataset = Dataset
    if not torch.cuda.is_available():  # its ViT puts an unused attention sum on 'cuda' by name
        to = torch.Tensor.to
        torch.Tensor.to = lambda self, *a, **k: to(self, *["cpu" if x == "cuda" else x for x in a], **k)
    official.cal_pro_score = lambda masks, amaps, **_: 0.0
    caught = []

    def roc_auc_score(y_true, y_score):
        caught.append(np.asarray(y_score))
        return 0.5

    official.roc_auc_score = roc_auc_score
    official.test(argparse.Namespace(
        mode="zero_shot", dataset="mvtec", data_path=str(work), save_path=str(work / "results"),
        config_path=str(config_path), checkpoint_path=str(checkpoint), model=recipe.ARCH, features_list=LAYERS,
        few_shot_features=LAYERS, pretrained=None, image_size=recipe.IMAGE_SIZE, k_shot=0, seed=42,
    ))
    n, size = len(paths), recipe.IMAGE_SIZE
    maps, scores = caught[0].reshape(n, size, size), caught[1]  # test.py: auroc_px first, then auroc_sp
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, maps=maps.astype(np.float32), image_scores=scores.astype(np.float64),
                        source=np.array(f"ByChelsea/VAND-APRIL-GAN@{args.commit}"))
    print(f"wrote {args.out}: maps {maps.shape} in [{maps.min():.3f}, {maps.max():.3f}], scores {scores}")


if __name__ == "__main__":
    main()
