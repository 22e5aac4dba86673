"""Make ``fixtures/anomalyclip.npz``: the official AnomalyCLIP test on the parity recipe (CPU, offline).

Usage: ``PYTHONPATH=<site with ftfy> python tests/parity/make_anomalyclip.py <AnomalyCLIP checkout>
[--out tests/parity/fixtures/anomalyclip.npz]`` (github.com/zqhang/AnomalyCLIP; made at 45ed4dd3).
Nothing of the checkout is copied: its ``test.test(args)`` runs as published (its own CLIP built by
``AnomalyCLIP_lib.load`` from a state-dict file, DPAM from layer 20, features 6 12 18 24, depth 9,
n_ctx 12, t_n_ctx 4, sigma 4, its prompt learner loaded from a checkpoint in its own format) on
the recipe's images, weights and prompts. Replaced: ``AnomalyCLIP_lib.load`` by its own non-JIT
branch (``build_model`` on the recipe's state dict, then ``float()``; the JIT archive of
ViT-L/14@336px is not downloaded, and its state-dict fallback re-reads a consumed file), the dataset class (the images in memory), the
logger's folder, and the two metric functions, which catch the maps and image scores.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402
from official_env import import_script, script_args  # noqa: E402

CATEGORY = "bottle"


def main() -> None:
    args = script_args(__doc__, "anomalyclip", "45ed4dd3")
    official = import_script(args.checkout, "test.py", "anomalyclip_test")
    import AnomalyCLIP_lib
    from AnomalyCLIP_lib import model_load
    from prompt_ensemble import AnomalyCLIP_PromptLearner

    work = Path(tempfile.mkdtemp(prefix="anomalyclip-parity-"))
    import open_clip  # bench's environment: only to name the recipe's tensors (OpenAI's key names)

    open_clip.factory._MODEL_CONFIGS[recipe.ARCH] = recipe.CONFIG
    state_dict = recipe.random_state_dict(recipe.shapes_of(open_clip.create_model(recipe.ARCH)))

    def load(name, device="cpu", design_details=None, **_):  # load()'s own non-JIT branch, on the recipe's weights
        return model_load.build_model(name, state_dict, design_details).to(device).float(), None

    AnomalyCLIP_lib.load = load
    design = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}
    model, _ = load("ViT-L/14@336px", "cpu", design)
    learner = AnomalyCLIP_PromptLearner(model, design)
    state = learner.state_dict()
    state.update(recipe.anomalyclip_prompts())
    checkpoint = work / "prompts.pth"
    torch.save({"prompt_learner": state}, checkpoint)

    images = [PIL.Image.fromarray(img) for img in recipe.images()]

    class Dataset(torch.utils.data.Dataset):  # replaces dataset.Dataset: the recipe's images
        obj_list = [CATEGORY]

        def __init__(self, root, transform, target_transform, dataset_name, mode="test"):
            self.transform = transform

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            mask = torch.zeros(1, recipe.IMAGE_SIZE, recipe.IMAGE_SIZE)
            return {"img": self.transform(images[i]), "cls_name": CATEGORY, "cls_id": 0, "img_mask": mask,
                    "anomaly": int(i in (1, 4)), "img_path": f"img{i}"}

    official.Dataset = Dataset
    caught = {}

    def image_level_metrics(results, obj, metric):
        caught["image_scores"] = np.array([float(s) for s in results[obj]["pr_sp"]])
        return 0.0

    def pixel_level_metrics(results, obj, metric):
        caught["maps"] = np.asarray(results[obj]["anomaly_maps"])
        return 0.0

    official.image_level_metrics, official.pixel_level_metrics = image_level_metrics, pixel_level_metrics
    official.test(argparse.Namespace(
        data_path=str(work), save_path=str(work / "results"), checkpoint_path=str(checkpoint), dataset="mvtec",
        features_list=[6, 12, 18, 24], image_size=recipe.IMAGE_SIZE, depth=9, n_ctx=12, t_n_ctx=4,
        feature_map_layer=[0, 1, 2, 3], metrics="image-pixel-level", seed=111, sigma=4,
    ))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, maps=caught["maps"].astype(np.float32), image_scores=caught["image_scores"],
                        source=np.array(f"zqhang/AnomalyCLIP@{args.commit}"))
    print(f"wrote {args.out}: maps {caught['maps'].shape}, scores {caught['image_scores']}")


if __name__ == "__main__":
    main()
