"""Make ``fixtures/adaclip.npz``: the official AdaCLIP test on the parity recipe (CPU, offline).

Usage: ``python tests/parity/make_adaclip.py <AdaCLIP checkout> [--out tests/parity/fixtures/adaclip.npz]``
(github.com/caoyunkang/AdaCLIP; made at e27ee32b). Its other imports (sklearn, scipy, pandas,
matplotlib, ftfy, regex) are in bench's environment. Nothing of the checkout is copied: its
``test.train(args)`` runs in dataset mode as ``test.sh`` (``create_model`` building ``CLIP(**model_cfg)``,
exact GELU; taps at depth // 4 multiples; prompting length 5, depth 4, branch VL, type SD, HSF with
k = 20; batch 1; the trainer's ``evaluation``: Gaussian sigma 4; its parameters loaded by the trainer
from a checkpoint in its own format) on ``recipe.ARCH_D64`` (its text prompts have the embedding
width and go into the text tower, so the two must be equal, as on ViT-L-14-336), the recipe's
images and ``recipe.adaclip_checkpoint()``. Its k-means is its own unseeded ``KMeans`` after
``test.py``'s ``setup_seed(111)``.

Replaced: ``custom_clip.load_openai_model`` by its own non-JIT branch (``build_model_from_openai_state_dict``
on the recipe's state dict, then ``float()``; no download), whose fp16 conversion rounds the weights
(the test gives bench the same rounded weights); the config file it reads from ``./model_configs``
(the recipe's, in a temporary working folder); the BPE vocabulary, which the checkout holds as a Git LFS
pointer, by open_clip's copy of the same file (its sha256 checked); ``get_data`` (the images in memory); ``cv2``,
``seaborn`` and ``torch.utils.tensorboard`` by empty modules (imported for reading image files, the
figures and training logs, none of which runs here); ``write2csv`` and the metric functions, which
catch the maps and image scores. A second run gives its ``KMeans`` ``random_state=0`` (bench's per-image
seed): ``image_scores_kmeans_seed0``.
"""
from __future__ import annotations

import argparse
import copy
import functools
import gzip
import hashlib
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

METRICS = ("auroc_im", "f1_im", "ap_im", "auroc_px", "f1_px", "ap_px")


def use_open_clip_vocabulary(checkout: Path) -> None:
    """Read open_clip's copy of OpenAI's BPE vocabulary where the checkout holds a Git LFS pointer to the same
    file (its sha256 checked against the pointer's)."""
    import open_clip

    pointer = checkout / "method" / "bpe_simple_vocab_16e6.txt.gz"
    text = pointer.read_bytes()
    if not text.startswith(b"version https://git-lfs"):
        return
    ours = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    oid = text.split(b"sha256:", 1)[1].split()[0].decode()
    if hashlib.sha256(ours.read_bytes()).hexdigest() != oid:
        raise SystemExit(f"Error: {pointer} is a Git LFS pointer and open_clip's vocabulary is another file")
    gzip_open = gzip.open
    gzip.open = lambda path, *a, **k: gzip_open(ours if Path(path) == pointer else path, *a, **k)


def main() -> None:
    args = script_args(__doc__, "adaclip", "e27ee32b")
    args.out = args.out.resolve()
    for name in ("cv2", "seaborn", "torch.utils.tensorboard"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torch.utils.tensorboard"].SummaryWriter = None
    work = Path(tempfile.mkdtemp(prefix="adaclip-parity-"))
    (work / "model_configs").mkdir()
    (work / "model_configs" / f"{recipe.ARCH_D64}.json").write_text(json.dumps(recipe.CONFIG_D64))
    os.chdir(work)  # test.py reads ./model_configs/<model>.json and writes log.txt here
    use_open_clip_vocabulary(args.checkout)
    official = import_script(args.checkout, "test.py", "adaclip_test")
    import open_clip  # bench's environment: only to name the recipe's tensors (OpenAI's key names)
    from method import adaclip, custom_clip, trainer

    open_clip.factory._MODEL_CONFIGS[recipe.ARCH_D64] = recipe.CONFIG_D64
    state_dict = recipe.half_rounded(recipe.random_state_dict(recipe.shapes_of(open_clip.create_model(recipe.ARCH_D64))))
    custom_clip._MODEL_CONFIGS[recipe.ARCH_D64] = copy.deepcopy(recipe.CONFIG_D64)

    def load_openai_model(name, precision=None, device=None, jit=True, cache_dir=None):  # its non-JIT branch, fp32
        cast_dtype = custom_clip.get_cast_dtype(precision)
        return custom_clip.build_model_from_openai_state_dict(dict(state_dict), cast_dtype=cast_dtype).to(device).float()

    custom_clip.load_openai_model = load_openai_model
    checkpoint = work / "adaclip.pth"
    torch.save(recipe.adaclip_checkpoint(), checkpoint)

    caught = {}

    def calculate_metric(results, obj):
        caught.update(results)
        return dict.fromkeys(METRICS, 0.0)

    official.get_data = lambda dataset_type_list, transform, target_transform, training: (
        ["bottle"], RecipeImages(transform), str(work))
    official.write2csv = lambda *_: None
    load = trainer.AdaCLIP_Trainer.load  # strict=False: check that every tensor of the file has a place

    def checked_load(self, path):
        unused = sorted(set(torch.load(path)) - set(self.state_dict()))
        if unused:
            raise SystemExit(f"Error: {path}: {unused[:4]} are not parameters of the official model")
        load(self, path)

    trainer.AdaCLIP_Trainer.load = checked_load
    trainer.calculate_metric = calculate_metric
    trainer.calculate_average_metric = lambda _: dict.fromkeys(METRICS, 0.0)
    test_args = argparse.Namespace(
        ckt_path=str(checkpoint), testing_model="dataset", testing_data="mvtec", save_path=str(work / "results"),
        model=recipe.ARCH_D64, save_fig=False, batch_size=1, image_size=recipe.IMAGE_SIZE, prompting_depth=4,
        prompting_length=5, prompting_type="SD", prompting_branch="VL", use_hsf=True, k_clusters=20,
    )
    official.train(test_args)  # as published: k-means on numpy's global random state
    maps = np.stack(caught["anomaly_maps"]).astype(np.float32)
    scores = np.array([float(s) for s in caught["anomaly_scores"]])
    adaclip.KMeans = functools.partial(adaclip.KMeans, random_state=0)  # again, k-means seeded per image as bench
    official.train(test_args)
    seeded = np.array([float(s) for s in caught["anomaly_scores"]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, maps=maps, image_scores=scores, image_scores_kmeans_seed0=seeded,
                        source=np.array(f"caoyunkang/AdaCLIP@{args.commit}"))
    print(f"wrote {args.out}: maps {maps.shape}, scores {scores}, with k-means seeded {seeded}")


if __name__ == "__main__":
    main()
