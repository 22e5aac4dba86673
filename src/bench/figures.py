"""Figure grids in the paper's Fig. 1 layout: image | ground truth | coarse | one column per refiner."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def printable(text: str) -> str:
    """``text`` as valid Unicode: a file name that is not UTF-8 (its bytes held as surrogates by
    Python) keeps its readable part and shows each undecodable byte as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def save_grid(
    path: Path,
    images: np.ndarray,
    masks: torch.Tensor,
    coarse: torch.Tensor,
    refined: dict[str, torch.Tensor],
    titles: list[str] | None = None,
) -> Path:
    """One row per sample; maps are shown with one colour scale per column (its colour bar below it)
    and the ground truth's outline drawn on them."""
    columns = [("image", None), ("ground truth", masks), ("coarse", coarse), *refined.items()]
    rows = len(images)
    truth = masks.float().numpy()
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.0 * len(columns), 2.0 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for c, (name, maps) in enumerate(columns):
        values = None if maps is None else maps.float().numpy()
        low, high = (0, 1) if values is None else (float(values.min()), float(values.max()))
        for r in range(rows):
            ax = axes[r, c]
            if values is None:
                ax.imshow(images[r])
            else:
                shown = ax.imshow(values[r], cmap="gray" if name == "ground truth" else "jet", vmin=low, vmax=high)
            if c > 1 and truth[r].any():  # the outline of the ground truth, in the map's own pixel coordinates
                height, width = values[r].shape
                ys = (np.arange(truth.shape[1]) + 0.5) * height / truth.shape[1] - 0.5
                xs = (np.arange(truth.shape[2]) + 0.5) * width / truth.shape[2] - 0.5
                ax.contour(xs, ys, truth[r], levels=[0.5], colors="white", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0 and titles:
                ax.set_ylabel(printable(titles[r]), fontsize=7)
        if c > 1:
            fig.colorbar(shown, ax=axes[:, c], orientation="horizontal", shrink=0.9, aspect=15)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
