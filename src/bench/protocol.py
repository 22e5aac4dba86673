"""PGT, progressive group-wise test-time training (docs/design.md, "PGT"), method- and refiner-agnostic.

The test stream of a category is shuffled with the seed and split into groups G1..Gk. For each
g = 1..k-1 the refiners train on Gg (its lowest-scored images as pseudo-normals, plus anomalies
synthesized on them and scored by the same ZSAD method) and refine Gg+1; weights carry over.
In G1 the trainable refiners keep the coarse maps unless ``warmup="self"`` trains on G1 and refines
it too; training-free refiners refine every group.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.config import PGTConfig
from bench.errors import ConfigError
from bench.interfaces import Backbone, Method, Refiner
from bench.ops import upsample
from bench.records import FeatureSet, RefineBatch, ScoreOutput
from bench.synth import synthesize_set


@dataclass
class Stream:
    """One category's test images with what every refiner shares, computed once."""

    pixels: np.ndarray  # (N, S, S, 3) uint8 at the backbone's input size
    images: torch.Tensor  # (N, 3, S, S) backbone-normalised
    features: FeatureSet
    labels: np.ndarray  # (N,) 0/1; used only by the contamination stress test


@dataclass
class GroupLog:
    group: int
    n_images: int
    n_pseudo_normals: int = 0
    n_true_anomalies_in_pseudo: int = 0
    synth_seconds: float = 0.0
    train_seconds: dict[str, float] = field(default_factory=dict)
    refine_seconds: dict[str, float] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class PGTOutput:
    maps: dict[str, torch.Tensor]  # refiner name → (N, S, S) final maps
    groups: list[np.ndarray]  # indices of each group, in stream order
    log: list[GroupLog]


def make_groups(n: int, config: PGTConfig, seed: int) -> list[np.ndarray]:
    """Seeded production order of ``n`` images, split into groups (by size or by count)."""
    order = np.random.default_rng(seed).permutation(n)
    if config.group_size > 0:
        return [order[i : i + config.group_size] for i in range(0, n, config.group_size)]
    if config.n_groups > n:
        raise ConfigError(f"pgt.n_groups={config.n_groups} is more than the {n} test images of the category")
    return [g for g in np.array_split(order, config.n_groups)]


def select_pseudo_normals(
    scores: np.ndarray, labels: np.ndarray, fraction: float, contamination: float, rng: np.random.Generator
) -> np.ndarray:
    """Positions (into the group) of its pseudo-normal images.

    The lowest-scored ``fraction`` of the group; then, for the stress test, ``contamination`` of
    that set (rounded) is replaced: its highest-scored true normals swap for true anomalies of
    the group drawn at random from those not selected. Ground truth is used only for this swap.
    A group with too few anomalies swaps what it has, with a warning: the run still carries the
    requested fraction as its label.
    """
    k = max(1, int(round(fraction * len(scores))))
    chosen = np.argsort(scores, kind="stable")[:k]
    n_swap = int(round(contamination * k))
    if n_swap == 0:
        return chosen
    outside = np.setdiff1d(np.flatnonzero(labels == 1), chosen)
    normals = chosen[labels[chosen] == 0]  # in ascending score order
    if n_swap > min(len(outside), len(normals)):
        warnings.warn(f"pgt.contamination {contamination:g}: a group has too few anomalous images to swap "
                      f"{n_swap} of its {k} pseudo-normals, so fewer were swapped (how many: the unit metric "
                      "n_true_anomalies_in_pseudo)", stacklevel=2)
        n_swap = min(len(outside), len(normals))
    drop = normals[len(normals) - n_swap :]
    add = rng.choice(outside, size=n_swap, replace=False)
    return np.concatenate([np.setdiff1d(chosen, drop, assume_unique=True), add])


def coarse_scores(method: Method, features: FeatureSet, groups: list[np.ndarray], reference: str) -> ScoreOutput:
    """ZSAD output for the whole stream: mutual over all images, or per group over the groups seen so far."""
    if reference == "all" or not method.info.inter_image:
        return method.score(features)
    n = len(features)
    scores, maps, evaluated = torch.empty(n), None, None
    seen = np.array([], dtype=int)
    for group in groups:
        seen = np.concatenate([seen, group])
        out = method.score(features.select(torch.as_tensor(seen)))
        rows = slice(len(seen) - len(group), len(seen))
        maps = maps if maps is not None else torch.empty((n, *out.maps.shape[1:]))
        scores[group], maps[group] = out.image_scores[rows], out.maps[rows]
        if out.evaluated is not None:
            evaluated = evaluated if evaluated is not None else torch.empty((n, *out.evaluated.shape[1:]))
            evaluated[group] = out.evaluated[rows]
    return ScoreOutput(scores, maps, evaluated)


def check_group_sizes(groups: list[np.ndarray], method: Method, trainable: bool = True, reference: str = "all") -> None:
    """An inter-image method scores an image against the others of its group only to train a
    refiner (synthetic images) or with ``reference="seen"``; otherwise the group size is free."""
    if not trainable and reference == "all":
        return
    smallest = min(len(g) for g in groups)
    if method.info.inter_image and smallest - 1 < method.info.min_images:
        raise ConfigError(
            f"a PGT group has only {smallest} images, but {method.info.name} scores each image against "
            f"the others of its group and needs at least {method.info.min_images + 1}: "
            "lower pgt.n_groups or raise pgt.group_size"
        )


def training_batch(
    stream: Stream,
    group: np.ndarray,
    pseudo: np.ndarray,
    method: Method,
    backbone: Backbone,
    config: PGTConfig,
    rng: np.random.Generator,
) -> RefineBatch:
    """Pseudo-normals (empty masks) and anomalies synthesized on them, each scored against its group.

    A synthetic image is scored against the group without its own source image, and a
    pseudo-normal against the rest of the group, so that neither sees its own twin.
    """
    members = group[pseudo]
    synth_images, synth_masks, sources = synthesize_set(
        list(stream.pixels[members]), config.synth_per_group, rng, config.synth
    )
    synth_x = backbone.preprocess(synth_images)
    synth_features = backbone.features(synth_x)
    synth_features.category = stream.features.category  # the same product: methods may prompt with it
    group_features = stream.features.select(torch.as_tensor(group))
    normal_maps = method.score(group_features).maps[torch.as_tensor(pseudo)]
    sources = np.asarray(sources)
    synth_maps = torch.empty((len(sources), *normal_maps.shape[1:]))
    for source in np.unique(sources):
        rows = torch.as_tensor(np.flatnonzero(sources == source))
        others = torch.as_tensor(np.delete(np.arange(len(group)), pseudo[source]))
        synth_maps[rows] = method.score(synth_features.select(rows), group_features.select(others)).maps
    size = stream.images.shape[-2:]
    masks = torch.cat([torch.zeros((len(members), *size)), torch.as_tensor(np.stack(synth_masks)).float()])
    return RefineBatch(
        images=torch.cat([stream.images[torch.as_tensor(members)], synth_x]),
        features=FeatureSet.concat([stream.features.select(torch.as_tensor(members)), synth_features]),
        coarse=torch.cat([normal_maps, synth_maps]),
        masks=masks,
    )


def coarse_scaler(maps: torch.Tensor):
    """Per-category min-max rescale of coarse maps.

    Monotone, so the coarse maps' own metrics are unchanged; every refiner then sees scores in
    [0, 1] whatever the method's scale, and group 1 (which keeps its coarse maps) shares the range
    of the refined maps of the later groups. Uses no labels.
    """
    low, high = maps.min(), maps.max()
    return lambda m: (m - low) / (high - low).clamp_min(1e-12)


def evaluation_maps(coarse: ScoreOutput, method: Method, size: tuple[int, int]) -> torch.Tensor:
    """The coarse maps as the method's official code evaluates them, at ``size``, min-max rescaled per category.

    ``coarse.evaluated`` where the method gives it, else the grid maps upsampled bilinearly with the
    method's ``align_corners``. The rescale (``coarse_scaler``) is monotone, so no metric sees it; it
    puts the maps group 1 keeps in the range of the refined maps (and is the per-category normalisation some
    official evaluations apply).
    """
    maps = coarse.evaluated if coarse.evaluated is not None else upsample(
        coarse.maps, size, align_corners=method.info.align_corners)
    return coarse_scaler(maps)(maps.float())


def run_pgt(
    stream: Stream,
    coarse: ScoreOutput,
    groups: list[np.ndarray],
    method: Method,
    backbone: Backbone,
    refiners: dict[str, Refiner],
    config: PGTConfig,
    contamination: float,
    seed: int,
) -> PGTOutput:
    """Run the group-wise train/refine loop for every refiner on identical groups and training data."""
    check_group_sizes(groups, method, any(r.trainable for r in refiners.values()), config.reference)
    rng = np.random.default_rng([seed, int(round(contamination * 1000))])
    scale = coarse_scaler(coarse.maps)
    coarse_maps = scale(coarse.maps)
    baseline = evaluation_maps(coarse, method, tuple(stream.images.shape[-2:]))  # what the official code evaluates
    for refiner in refiners.values():
        refiner.bind(method.info)
    maps = {name: baseline.clone() for name in refiners}
    trainable = [name for name, r in refiners.items() if r.trainable]
    scores = coarse.image_scores.numpy()
    log: list[GroupLog] = []
    last_trained = -1
    for g, group in enumerate(groups):
        entry = GroupLog(group=g + 1, n_images=len(group))
        log.append(entry)
        train_on = 0 if config.warmup == "self" and g == 0 else g - 1
        if trainable and train_on > last_trained:
            source = groups[train_on]
            pseudo = select_pseudo_normals(
                scores[source], stream.labels[source], config.pseudo_normal_fraction, contamination, rng
            )
            entry.n_pseudo_normals = len(pseudo)
            entry.n_true_anomalies_in_pseudo = int(stream.labels[source[pseudo]].sum())
            start = time.perf_counter()
            batch = training_batch(stream, source, pseudo, method, backbone, config, rng)
            batch.coarse = scale(batch.coarse)
            entry.synth_seconds = time.perf_counter() - start
            for name in trainable:
                start = time.perf_counter()
                entry.losses[name] = refiners[name].fit(batch)
                entry.train_seconds[name] = time.perf_counter() - start
            last_trained = train_on
        index = torch.as_tensor(group)
        # without a training round yet, trainable refiners keep the coarse maps (training-free ones refine);
        # the baseline keeps them in every group
        ready = {n: r for n, r in refiners.items() if not r.keeps_coarse and (train_on >= 0 or not r.trainable)}
        for name, refiner in ready.items():
            start = time.perf_counter()
            refined = refiner.refine(stream.images[index], stream.features.select(index), coarse_maps[index])
            if config.fuse_coarse > 0:
                refined = (1 - config.fuse_coarse) * refined + config.fuse_coarse * baseline[index]
            maps[name][index] = refined.float()
            entry.refine_seconds[name] = time.perf_counter() - start
    return PGTOutput(maps=maps, groups=groups, log=log)
