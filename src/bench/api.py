"""The Python API behind the CLI: ``run(config)`` benchmarks methods × refiners under PGT."""
from __future__ import annotations

import csv
import tempfile
import warnings
from contextlib import closing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from bench.bootstrap import save, unit_statistics
from bench.cache import FeatureCache, encode
from bench.config import RunConfig
from bench.data import open_dataset, select_categories
from bench.errors import ConfigError, WeightsError
from bench.evaluation import eval_masks, evaluate
from bench.executors import EXECUTORS
from bench.export import log_config, log_summary
from bench.identity import run_name
from bench.interfaces import Backbone, Dataset, Method
from bench.protocol import PGTOutput, Stream, check_group_sizes, coarse_scores, make_groups, refiner_trains, run_pgt
from bench.records import Sample
from bench.registry import BACKBONES, METHODS, REFINERS
from bench.resume import FINGERPRINT, ResumeState, dataset_fingerprint, start_or_resume
from bench.timing import StageTimer
from bench.tracking import REPLICATES, Store, open_store

EMBEDDED_SEED = 0  # the embedded dataset is one fixed dataset, whatever the run's seed


def embedded_root(out: Path) -> Path:
    """The embedded synthetic dataset under ``out``, generated on first use."""
    from bench.datasets.synthetic import MARKER, generate

    root = Path(out) / "data" / "synthetic"
    if not (root / MARKER).is_file():
        generate(root, seed=EMBEDDED_SEED)
    return root


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize_uint8(image: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), RESAMPLE[resample]))


def build_stream(samples: list[Sample], backbone: Backbone, batch_size: int, progress: bool,
                 cache: FeatureCache | None = None) -> Stream:
    """Read, resize and encode a category's test images once (shared by all methods and refiners).

    Images are resized to the backbone's input size with its declared resampling; features go
    through ``cache`` when given (only images not in it reach the backbone). The FeatureSet
    carries the samples' keys and category (``FeatureSet.keys``).
    """
    pixels = np.stack([resize_uint8(s.image, backbone.input_size, backbone.resample)
                       for s in tqdm(samples, desc="load", disable=not progress, leave=False)])
    def bar(batches):
        return tqdm(batches, desc=f"features {backbone.name}", disable=not progress, leave=False)

    images, features = encode(backbone, list(pixels), batch_size, cache, bar)
    features.keys = [s.key for s in samples]
    categories = {s.category for s in samples}
    features.category = categories.pop() if len(categories) == 1 else None
    labels = np.array([s.label for s in samples])
    return Stream(pixels, images, features, labels)


def _frozen(value: object) -> object:
    """Hashable form of an options value (dicts, lists and tuples nested)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class SkippedMethodWarning(UserWarning):
    """A method of ``--methods all`` that cannot run with this configuration (the message says why)."""


@dataclass(frozen=True)
class Task:
    """What an executor computes at once: one method on one category with every refiner and
    contamination, which share the category's features and the method's coarse maps."""

    category: str
    method: str
    refiners: tuple[str, ...]


@dataclass
class RunSummary:
    parent_id: str
    units: pd.DataFrame
    timings: dict[str, float]


class Runner:
    """One ``bench run``: owns the store, the timers and the backbones shared across methods."""

    def __init__(self, config: RunConfig, progress: bool = True) -> None:
        self.config = config.validate()
        self.progress = progress
        self.timer = StageTimer()
        self.resume_state: ResumeState | None = None  # set by run(): the parent run and the units it holds
        self._backbones: dict[tuple, Backbone] = {}
        self._caches: dict[int, FeatureCache] = {}
        self._streams: dict[tuple[int, str], Stream] = {}
        self.skipped: dict[str, str] = {}  # methods left out of --methods all, and why (usable_methods)

    def __getstate__(self) -> dict[str, object]:
        """A Runner travels (to a Ray worker) as its config and resume state; its dataset, store,
        backbones and features are opened again where it lands."""
        return {"config": self.config, "resume_state": self.resume_state}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["config"], progress=False)
        self.resume_state = state["resume_state"]

    @cached_property
    def dataset(self) -> Dataset:
        """The run's dataset (default: the embedded one, made on first use)."""
        with self.timer.stage("load"):
            return open_dataset(self.config.data_root or embedded_root(self.config.out), self.config.dataset)

    @cached_property
    def store(self) -> Store:
        """The run's MLflow store."""
        with self.timer.stage("logging"):  # on first use, MLflow creates its database here
            return open_store(self.config.out, self.config.tracking_uri, self.config.experiment)

    def backbone_kwargs(self, options: dict[str, object] | None = None) -> dict[str, object]:
        """Factory options of a backbone: the method's, then the run's ``--weights`` / ``--device``."""
        kwargs = dict(options or {})
        kwargs["device"] = self.config.device
        if self.config.weights != "default":
            kwargs["weights"] = self.config.weights
        return kwargs

    def backbone(self, name: str, options: dict[str, object] | None = None) -> Backbone:
        """The backbone ``name`` created with ``options``; one instance per (name, options)."""
        kwargs = self.backbone_kwargs(options)
        key = (name, _frozen(kwargs))
        if key not in self._backbones:
            self._backbones[key] = BACKBONES.create(name, **kwargs)
        return self._backbones[key]

    def method(self, name: str) -> tuple[Method, Backbone]:
        """A fresh method ``name`` with its options, bound to its backbone (the run's or its default)."""
        method = METHODS.create(name, **self.config.method_options.get(name, {}))
        return method, self.bind(method)

    def bind(self, method: Method) -> Backbone:
        """Create (or reuse) the method's backbone and bind the method to it."""
        backbone = self.method_backbone(method)
        method.bind(backbone)
        return backbone

    def method_backbone(self, method: Method) -> Backbone:
        """The run's ``--backbone`` or the method's default, with the method's options."""
        name = self.config.backbone or method.info.default_backbone
        return self.backbone(name, method.backbone_options(name))

    def usable_methods(self, names: list[str], skip_unusable: bool) -> list[str]:
        """Set each method up once before anything runs, so that bad options, a missing checkpoint,
        weights offline or a backbone it cannot use are one clear error up front.

        ``skip_unusable`` (``--methods all``): a method that cannot get its default weights or its
        checkpoint, or cannot use the backbone, is skipped with a warning that says why (e.g. the
        CLIP methods on the embedded default, offline), recorded in ``self.skipped``; at least one
        method must remain. Always errors: bad method options, weights the user named with
        ``--weights`` that do not load, and any problem of a method named in ``--methods``.
        """
        usable = []
        for name in names:
            method = METHODS.create(name, **self.config.method_options.get(name, {}))
            backbone = None
            try:
                backbone = self.method_backbone(method)
                method.bind(backbone)
            except (WeightsError, ConfigError) as exc:
                named_weights = backbone is None and isinstance(exc, WeightsError) and self.config.weights != "default"
                if not skip_unusable or named_weights:
                    raise
                self.skipped[name] = str(exc)
                warnings.warn(f"--methods all: skipping {name}: {exc}", SkippedMethodWarning, stacklevel=2)
                continue
            usable.append(name)
        if not usable:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
            raise ConfigError(f"--methods all: no method can run with this configuration ({reasons})")
        return usable

    def feature_cache(self, backbone: Backbone) -> FeatureCache | None:
        """The on-disk feature cache of ``backbone`` under ``<out>/cache`` (None with cache off)."""
        if not self.config.cache:
            return None
        if id(backbone) not in self._caches:
            self._caches[id(backbone)] = FeatureCache(Path(self.config.out) / "cache", backbone)
        return self._caches[id(backbone)]

    def stream(self, dataset: Dataset, category: str, samples: list[Sample], backbone: Backbone) -> Stream:
        key = (id(backbone), category)  # backbones are unique per (name, options), see backbone()
        if key not in self._streams:
            self._streams = {k: v for k, v in self._streams.items() if k[1] == category}  # one category at a time
            with self.timer.stage("features"):
                cache = self.feature_cache(backbone)
                self._streams[key] = build_stream(samples, backbone, self.config.batch_size, self.progress, cache)
        return self._streams[key]

    def run(self) -> RunSummary:
        cfg = self.config
        dataset = self.dataset
        with self.timer.stage("load"):
            categories = select_categories(dataset, cfg.categories)
        methods = self.usable_methods(METHODS.resolve(cfg.methods), skip_unusable=cfg.methods.strip() == "all")
        refiners = ["none"] + [r for r in REFINERS.resolve(cfg.refiners) if r != "none"]
        preflight(dataset, categories, methods, cfg)
        store = self.store
        params = {**cfg.to_params(), "data_root": str(dataset.root.resolve()), "dataset_resolved": dataset.name,
                  FINGERPRINT: dataset_fingerprint(dataset, categories),
                  "methods_resolved": ",".join(methods), "methods_skipped": ",".join(self.skipped) or "-"}
        # a new parent run, or the unfinished one of the same config (bench.resume)
        state = self.resume_state = start_or_resume(store, run_name(dataset.name, methods, refiners, params), params,
                                                    cfg.resume)
        parent = state.parent_id
        log_config(store, parent, cfg, dataset.root)
        tasks = [Task(category, method_name, tuple(refiners)) for category in categories for method_name in methods
                 if not state.method_done(category, method_name, cfg.pgt.contamination, refiners)]
        try:
            with closing(EXECUTORS[cfg.executor](self.run_task, tasks, cfg)) as finished:
                for seconds in tqdm(finished, total=len(tasks), desc="tasks", disable=not self.progress):
                    for stage, value in seconds.items():  # with Ray: summed over tasks that ran side by side
                        self.timer.add(stage, value)
            with self.timer.stage("logging"):
                log_summary(store, parent)  # category means and tables on the parent (bench.export)
            store.log_metrics(parent, self.timer.as_metrics())
        except BaseException as exc:
            store.finish(parent, "FAILED" if isinstance(exc, Exception) else "KILLED")
            raise
        store.finish(parent)
        return RunSummary(parent, store.units(parent, replicates=True), dict(self.timer.seconds))

    def run_task(self, task: Task) -> dict[str, float]:
        """Compute one task and log its units; returns the seconds it spent per stage.

        The executor calls it here, or on a copy of this Runner in a Ray worker (``__getstate__``).
        """
        timer, self.timer = self.timer, StageTimer()  # this task's stages alone: run() adds them up
        try:
            self.run_unit(self.store, self.resume_state.parent_id, self.dataset, task.method, task.category,
                          list(task.refiners))
            return dict(self.timer.seconds)
        finally:
            self.timer = timer

    def refiners(self, names: list[str], backbone: Backbone) -> dict:
        """Fresh refiners for one unit (state starts empty, then carries over between its groups)."""
        cfg = self.config
        return {
            name: REFINERS.create(
                name, channels=backbone.channels, image_size=backbone.input_size, seed=cfg.seed,
                device=cfg.device, **cfg.refiner_options.get(name, {}),
            )
            for name in names
        }

    def run_unit(self, store: Store, parent: str, dataset: Dataset, method_name: str, category: str, refiner_names: list[str]) -> None:
        cfg = self.config
        method, backbone = self.method(method_name)
        if not method.info.scores_unseen_images:
            trainable = [n for n, r in self.refiners(refiner_names, backbone).items() if r.trainable]
            if trainable:
                raise ConfigError(
                    f"method {method_name!r} can only score the dataset's own test images, so PGT cannot "
                    f"make coarse maps for its synthetic training images: the trainable refiner(s) "
                    f"{', '.join(trainable)} cannot be used with it. Use training-free refiners "
                    f"(e.g. --refiner none, gaussian or guided)."
                )
        with self.timer.stage("load"):
            samples = dataset.test(category)
        stream = self.stream(dataset, category, samples, backbone)
        eval_size = cfg.eval_size or backbone.input_size
        backbone_params = {"backbone": backbone.name, "backbone_input_size": str(backbone.input_size),
                           "backbone_layers": ",".join(backbone.channels)}
        with self.timer.stage("load"):
            masks = eval_masks(samples, eval_size, cfg.mask_threshold) if dataset.category_has_masks(category) else None
        groups = make_groups(len(samples), cfg.pgt, cfg.seed)
        with self.timer.stage("scoring"):
            coarse = coarse_scores(method, stream.features, groups, cfg.pgt.reference)
        scores = coarse.image_scores.numpy()
        state = self.resume_state
        for contamination in cfg.pgt.contamination:
            if state is not None and state.block_done(category, method_name, contamination, refiner_names):
                continue  # finished before an interruption (bench.resume)
            built = self.refiners(refiner_names, backbone)
            with self.timer.stage("pgt"):
                output = run_pgt(stream, coarse, groups, method, backbone, built, cfg.pgt, contamination, cfg.seed)
            self.timer.add("pgt_synth", sum(log.synth_seconds for log in output.log))
            self.timer.add("pgt_train", sum(sum(log.train_seconds.values()) for log in output.log))
            self.timer.add("pgt_refine", sum(sum(log.refine_seconds.values()) for log in output.log))
            with tempfile.TemporaryDirectory() as tmp:
                with self.timer.stage("logging"):
                    artifacts = self.artifacts(Path(tmp), samples, stream, coarse.maps, output, masks, category)
                for name, maps in output.maps.items():
                    if state is not None and state.unit_done(category, method_name, contamination, name):
                        continue  # its unit was logged before an interruption; the block is redone for the others
                    with self.timer.stage("metrics"):
                        resized = F.interpolate(maps[:, None], size=(eval_size, eval_size), mode="bilinear", align_corners=False)[:, 0]
                        metrics = evaluate(scores, stream.labels, resized, masks, groups)
                    unit = {"dataset": dataset.name, "method": method_name, "refiner": name,
                            "contamination": contamination, "category": category, "seed": cfg.seed}
                    metrics.update(group_metrics(output, name, built[name]))
                    with self.timer.stage("bootstrap"):  # intervals and per-group metrics (bench.bootstrap)
                        stats = unit_statistics(scores, stream.labels, resized, masks, groups, cfg.seed, category,
                                                cfg.bootstrap)
                    series = {**stats.series(), "loss": [v for log in output.log for v in log.losses.get(name, [])]}
                    extra = [save(Path(tmp) / name / REPLICATES, stats.replicates)] if cfg.bootstrap else []
                    with self.timer.stage("logging"):
                        store.log_unit(parent, unit, metrics, backbone_params, series, artifacts + extra)

    def artifacts(self, folder: Path, samples, stream, coarse, output: PGTOutput, masks, category: str) -> list[Path]:
        from bench.figures import save_grid

        paths = []
        table = folder / f"{category}_groups.csv"
        with table.open("w", newline="") as handle:
            writer = csv.writer(handle)
            names = list(output.maps)
            writer.writerow(["group", "n_images", "n_pseudo_normals", "n_true_anomalies_in_pseudo", "synth_seconds",
                             *[f"train_seconds_{n}" for n in names], *[f"refine_seconds_{n}" for n in names]])
            for log in output.log:
                writer.writerow([log.group, log.n_images, log.n_pseudo_normals, log.n_true_anomalies_in_pseudo,
                                 f"{log.synth_seconds:.3f}", *[f"{log.train_seconds.get(n, 0):.3f}" for n in names],
                                 *[f"{log.refine_seconds.get(n, 0):.3f}" for n in names]])
        paths.append(table)
        anomalous = [i for i in np.concatenate(output.groups[1:] or output.groups) if stream.labels[i] == 1]
        if self.config.figures and anomalous and masks is not None:
            anomalous = sorted(anomalous)
            picks = [anomalous[i] for i in np.linspace(0, len(anomalous) - 1, min(self.config.figures, len(anomalous))).astype(int)]
            figure = folder / f"{category}_grid.png"
            save_grid(figure, stream.pixels[picks], masks[picks], coarse[picks], {k: v[picks] for k, v in output.maps.items()},
                      titles=[samples[i].key for i in picks])
            paths.append(figure)
        return paths


@dataclass
class MethodCard:
    """What `bench list methods` shows of a method: its info at default options."""

    name: str
    paper: str
    default_backbone: str
    training: str
    in_all: bool
    settings: dict[str, object]
    deviations: str


def method_catalog() -> list[MethodCard]:
    """Every registered method described from its ``MethodInfo`` (created with default options).

    A method that cannot be created without options (``external`` needs its maps folder) is shown
    with its registry description and the option it needs.
    """
    cards = []
    for name in METHODS.names():
        entry = METHODS.entry(name)
        try:
            info = METHODS.create(name).info
        except ConfigError as exc:
            cards.append(MethodCard(name, entry.description, "-", "-", entry.in_all, {"needs": str(exc)}, ""))
            continue
        paper = f"{info.paper} (arXiv {info.arxiv})" if info.arxiv else info.paper
        training = "auxiliary dataset" if info.needs_auxiliary_training else "none"
        cards.append(MethodCard(name, paper, info.default_backbone, training, entry.in_all,
                                dict(info.settings), info.deviations))
    return cards


def preflight(dataset: Dataset, categories: list[str], methods: list[str], cfg: RunConfig) -> None:
    """Errors that need no pixels, raised before anything is computed or logged: method options,
    and PGT groups too small for a method in some category (the tree is scanned, not read)."""
    trainable = any(refiner_trains(name) for name in REFINERS.resolve(cfg.refiners))
    for method_name in methods:
        method = METHODS.create(method_name, **cfg.method_options.get(method_name, {}))
        for category in categories:
            n = len(dataset.test(category))
            try:
                check_group_sizes(make_groups(n, cfg.pgt, cfg.seed), method, trainable, cfg.pgt.reference)
            except ConfigError as exc:
                raise ConfigError(f"category {category!r} ({n} test images): {exc}") from None


def group_metrics(output: PGTOutput, name: str, refiner) -> dict[str, float]:
    """Cost of a refiner in this unit: training and refining seconds, parameters."""
    train = sum(log.train_seconds.get(name, 0.0) for log in output.log)
    refine = sum(log.refine_seconds.get(name, 0.0) for log in output.log)
    n_refined = sum(log.n_images for log in output.log if name in log.refine_seconds)
    trained = [log for log in output.log if name in log.train_seconds]
    return {
        "train_seconds_total": train,
        "train_seconds_per_group": train / len(trained) if trained else 0.0,
        "refine_ms_per_image": 1000 * refine / n_refined if n_refined else 0.0,
        "synth_seconds_total": sum(log.synth_seconds for log in output.log),
        "n_parameters": float(refiner.num_parameters()),
        "n_true_anomalies_in_pseudo": float(sum(log.n_true_anomalies_in_pseudo for log in output.log)),
    }


def run(config: RunConfig, progress: bool = True) -> RunSummary:
    """Benchmark ``config``'s methods × refiners on its dataset under PGT; everything goes to MLflow."""
    return Runner(config, progress).run()
