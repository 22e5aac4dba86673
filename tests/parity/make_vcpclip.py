"""Make ``fixtures/vcpclip.npz``: the official VCP-CLIP test on the parity recipe (CPU, offline).

Usage: ``python tests/parity/make_vcpclip.py <VCP-CLIP checkout> [--out tests/parity/fixtures/vcpclip.npz]``
(github.com/xiaozhen228/VCP-CLIP; made at 4dd96ec6). Its other imports (sklearn, scipy, tabulate,
tqdm, ftfy, regex) are in bench's environment. Nothing of the checkout is copied: its ``test.test(args)``
runs as in ``test.sh`` (``Load_CLIP`` building its own CLIP with exact GELU, features 6 12 18 24,
prompt_len 2, deep_prompt_len 1, 11 deep text layers, use_global, alpha 0.2, sigma 8, its modules
loaded from a checkpoint in its own format) on ``recipe.ARCH_D64`` (embed_dim 64: its Pre-VCP asserts
text width == embedding dim), the recipe's images and ``recipe.vcpclip_checkpoint()``.

Replaced: ``torch.jit.load`` (the JIT archive of ViT-L-14-336 is not downloaded) by an object whose
``state_dict()`` is the recipe's, rounded to fp16 (``build_model`` rounds the matrices to fp16 as
OpenAI's archive holds them; the test gives bench the same rounded weights); ``Tensor.to('cuda')``
by ``to('cpu')`` (``VisionTransformer.forward`` sums its attention, unused, on a hard-coded 'cuda'); the dataset class (the
images in memory); ``cv2``, ``albumentations`` and ``skimage`` by empty modules (imported for the
training augmentation, the visualisation and AUPRO, none of which runs here) and the visualisation
itself; the metric functions, which catch the fused map before its per-category normalisation (the
argument of ``normalize``) and the image scores (min-max normalised per category, as ``calcuate_metric``
passes them to ``roc_auc_score``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402
from official_env import RecipeImages, import_script, script_args  # noqa: E402


class _Archive:
    """What ``Load_CLIP`` reads of ``torch.jit.load``'s result: ``eval()`` and ``state_dict()``."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        self._state = state_dict

    def eval(self) -> _Archive:
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state)


def main() -> None:
    args = script_args(__doc__, "vcpclip", "4dd96ec6")
    args.out = args.out.resolve()
    os.chdir(args.checkout)  # its tokenizer opens ./models/bpe_simple_vocab_16e6.txt.gz
    for name in ("cv2", "albumentations", "skimage", "skimage.measure"):
        sys.modules.setdefault(name, types.ModuleType(name))
    official = import_script(args.checkout, "test.py", "vcpclip_test")
    import open_clip  # bench's environment: only to name the recipe's tensors (OpenAI's key names)

    open_clip.factory._MODEL_CONFIGS[recipe.ARCH_D64] = recipe.CONFIG_D64
    state_dict = recipe.random_state_dict(recipe.shapes_of(open_clip.create_model(recipe.ARCH_D64)))
    state_dict = recipe.half_rounded(state_dict)
    torch.jit.load = lambda *_, **__: _Archive(state_dict)
    to = torch.Tensor.to  # VisionTransformer.forward sums its attention (unused) on a hard-coded 'cuda'
    torch.Tensor.to = lambda self, *a, **k: to(self, *("cpu" if isinstance(x, str) and x == "cuda" else x for x in a), **k)

    work = Path(tempfile.mkdtemp(prefix="vcpclip-parity-"))
    checkpoint = work / "vcp.pth"
    torch.save(recipe.vcpclip_checkpoint(), checkpoint)
    config = work / "config.json"
    config.write_text(json.dumps(recipe.CONFIG_D64))
    (work / "ViT-L-14-336px.pt").touch()  # Load_CLIP opens it before torch.jit.load

    caught = {}

    def normalize(pred, *rest):
        caught["maps"] = np.array(pred)  # the fused map, smoothed, before the per-category min-max
        return original_normalize(pred, *rest)

    def roc_auc_score(y_true, y_score):
        caught.setdefault("scores", []).append(np.asarray(y_score))
        return 0.0

    original_normalize = official.normalize
    official.MVTecDataset, official.normalize, official.roc_auc_score = RecipeImages, normalize, roc_auc_score
    official.average_precision_score = lambda *_: 0.0
    official.precision_recall_curve = lambda *_: (np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5]))
    official.cal_pro_score = lambda *_: 0.0
    official.visualization = lambda **_: None
    official.cv2 = types.SimpleNamespace(imread=lambda _: None, resize=lambda *_: None)
    official.setup_seed(333)
    official.test(argparse.Namespace(
        data_path=str(work), save_path=str(work / "results"), checkpoint_path=str(checkpoint),
        config_path=str(config), pretrained_path=str(work / "ViT-L-14-336px.pt"), dataset="mvtec",
        model="ViT-L-14-336", pretrained="openai", features_list=[6, 12, 18, 24], image_size=recipe.IMAGE_SIZE,
        seed=333, prompt_len=2, deep_prompt_len=1, device_id=0, use_global=True, total_d_layer_len=11,
    ))
    image_scores = caught["scores"][1]  # the second call: image level (the first is pixel level)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, maps=caught["maps"].astype(np.float32), image_scores=image_scores,
                        source=np.array(f"xiaozhen228/VCP-CLIP@{args.commit}"))
    print(f"wrote {args.out}: maps {caught['maps'].shape}, scores {image_scores}")


if __name__ == "__main__":
    main()
