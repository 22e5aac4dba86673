"""Make ``fixtures/winclip.npz``: anomalib's zero-shot WinCLIP on the parity recipe (CPU, offline).

WinCLIP's authors published no code; the reference is anomalib's ``WinClipModel``
(``models/image/winclip/torch_model.py``), which needs its own open_clip pin (``<2.26.1``, the
``clip`` extra): with later open_clip versions its LND permutes meet a batch-first transformer and
the windows attend across each other. bench needs a later open_clip, so this runs in a separate
site: ``pip install --no-deps --target SITE "anomalib==2.7.0" "open_clip_torch<2.26.1"`` plus
anomalib's own dependencies, then ``PYTHONPATH=SITE python tests/parity/make_winclip.py
[--out tests/parity/fixtures/winclip.npz]``. Nothing of anomalib is copied: its model runs as
published (``scales=(2, 3)``, its prompt ensemble, windows, harmonic aggregation, bilinear
upsampling); only the architecture and the weights are the recipe's (its module constants
``BACKBONE``/``PRETRAINED`` name the tiny CLIP and no download; the recipe's weights are loaded
before ``setup`` collects the text embeddings).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402

CATEGORY = "bottle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "fixtures" / "winclip.npz")
    args = parser.parse_args()
    import anomalib
    import open_clip
    from anomalib.models.image.winclip import torch_model

    open_clip.factory._MODEL_CONFIGS[recipe.ARCH] = recipe.CONFIG
    torch_model.BACKBONE, torch_model.PRETRAINED = recipe.ARCH, None
    model = torch_model.WinClipModel(scales=(2, 3)).eval()
    model.clip.load_state_dict(recipe.random_state_dict(recipe.shapes_of(model.clip)), strict=True)
    model.setup(CATEGORY)
    batch = torch.stack([model.transform(img) for img in recipe.images()])
    out = model(batch)
    version = getattr(open_clip, "__version__", None) or __import__("open_clip.version").version.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, maps=out.anomaly_map.numpy().astype(np.float32),
                        image_scores=out.pred_score.numpy().astype(np.float64),
                        source=np.array(f"anomalib=={anomalib.__version__} (open_clip=={version})"))
    print(f"wrote {args.out}: maps {tuple(out.anomaly_map.shape)}, scores {out.pred_score.numpy()}")


if __name__ == "__main__":
    main()
