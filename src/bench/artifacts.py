"""The files logged with each unit run: the per-group log of a category and its figure grid."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from bench.protocol import PGTOutput, Stream
from bench.records import Sample


def group_table(path: Path, output: PGTOutput) -> Path:
    """One CSV row per PGT group: sizes, pseudo-normals, seconds of synthesis, training and refining."""
    names = list(output.maps)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "n_images", "n_pseudo_normals", "n_true_anomalies_in_pseudo", "synth_seconds",
                         *[f"train_seconds_{n}" for n in names], *[f"refine_seconds_{n}" for n in names]])
        for log in output.log:
            writer.writerow([log.group, log.n_images, log.n_pseudo_normals, log.n_true_anomalies_in_pseudo,
                             f"{log.synth_seconds:.3f}", *[f"{log.train_seconds.get(n, 0):.3f}" for n in names],
                             *[f"{log.refine_seconds.get(n, 0):.3f}" for n in names]])
    return path


def write_artifacts(folder: Path, samples: list[Sample], stream: Stream, coarse: torch.Tensor, output: PGTOutput,
                    masks: torch.Tensor | None, category: str, figures: int) -> list[Path]:
    """``<category>_groups.csv`` and, with masks and ``figures`` > 0, ``<category>_grid.png``: up to
    ``figures`` anomalous images spread over the refined groups (image | mask | coarse | each refiner)."""
    from bench.figures import save_grid

    paths = [group_table(folder / f"{category}_groups.csv", output)]
    anomalous = [i for i in np.concatenate(output.groups[1:] or output.groups) if stream.labels[i] == 1]
    if figures and anomalous and masks is not None:
        anomalous = sorted(anomalous)
        picks = [anomalous[i] for i in np.linspace(0, len(anomalous) - 1, min(figures, len(anomalous))).astype(int)]
        figure = folder / f"{category}_grid.png"
        save_grid(figure, stream.pixels[picks], masks[picks], coarse[picks], {k: v[picks] for k, v in output.maps.items()},
                  titles=[samples[i].key for i in picks])
        paths.append(figure)
    return paths
