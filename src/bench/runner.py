"""The runner of one ``bench run``: its plan's tasks, through an executor, logged to the store.

Order of work: the plan (every check, ``bench.plan``), then the dataset (the embedded default is
written on first use), then the MLflow parent run (new or resumed, ``bench.resume``), then the
tasks. A task is one method on one category: its features (cached), coarse maps, and one PGT
block per contamination with every refiner (``bench.protocol``), each refiner's unit logged.
"""
from __future__ import annotations

import tempfile
from contextlib import closing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.artifacts import write_artifacts
from bench.bootstrap import save, unit_statistics
from bench.cache import FeatureCache, encode
from bench.config import RunConfig
from bench.evaluation import eval_masks, evaluate, warn_empty_masks
from bench.executors import EXECUTORS
from bench.export import log_config, log_summary
from bench.identity import run_name
from bench.imageio import resize_uint8
from bench.interfaces import Backbone, Dataset, Refiner
from bench.plan import RunPlan, Task, build_plan, build_refiners
from bench.protocol import PGTOutput, Stream, coarse_scores, make_groups, run_pgt
from bench.records import Sample
from bench.resume import FINGERPRINT, ResumeState, dataset_fingerprint, start_or_resume
from bench.timing import StageTimer
from bench.tracking import REPLICATES, Store, open_store


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
    features.shapes = [s.image.shape[:2] for s in samples]
    categories = {s.category for s in samples}
    features.category = categories.pop() if len(categories) == 1 else None
    labels = np.array([s.label for s in samples])
    return Stream(pixels, images, features, labels)


def group_metrics(output: PGTOutput, name: str, refiner: Refiner) -> dict[str, float]:
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


@dataclass
class RunSummary:
    parent_id: str
    units: pd.DataFrame
    timings: dict[str, float]


class Runner:
    """One ``bench run``: owns its plan, the store, the timers and the features of the current category."""

    def __init__(self, config: RunConfig, progress: bool = True, methods: list[str] | None = None) -> None:
        self.config = config.validate()
        self.progress = progress
        self.timer = StageTimer()
        self.resume_state: ResumeState | None = None  # set by run(): the parent run and the units it holds
        self._methods = methods  # a Ray worker's copy: exactly the methods of the parent's plan
        self._caches: dict[int, FeatureCache] = {}
        self._streams: dict[tuple[int, str], Stream] = {}

    def __getstate__(self) -> dict[str, object]:
        """A Runner travels (to a Ray worker) as its config, resume state and methods; its plan,
        dataset, store and features are made again where it lands."""
        methods = list(self.plan.methods) if "plan" in self.__dict__ else self._methods
        return {"config": self.config, "resume_state": self.resume_state, "methods": methods}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["config"], progress=False, methods=state["methods"])
        self.resume_state = state["resume_state"]

    @cached_property
    def plan(self) -> RunPlan:
        """The run's plan: every check of the configuration, done before any work."""
        return build_plan(self.config, self._methods)

    @cached_property
    def dataset(self) -> Dataset:
        """The run's dataset (default: the embedded one, written on first use)."""
        with self.timer.stage("load"):
            return self.plan.open_dataset(self.progress)

    @cached_property
    def store(self) -> Store:
        """The run's MLflow store."""
        with self.timer.stage("logging"):  # on first use, MLflow creates its database here
            return open_store(self.config.out, self.config.tracking_uri, self.config.experiment)

    def feature_cache(self, backbone: Backbone) -> FeatureCache | None:
        """The on-disk feature cache of ``backbone`` under ``<out>/cache`` (None with cache off)."""
        if not self.config.cache:
            return None
        if id(backbone) not in self._caches:
            self._caches[id(backbone)] = FeatureCache(Path(self.config.out) / "cache", backbone)
        return self._caches[id(backbone)]

    def stream(self, category: str, samples: list[Sample], backbone: Backbone) -> Stream:
        key = (id(backbone), category)  # backbones are unique per (name, options), see plan.Backbones
        if key not in self._streams:
            self._streams = {k: v for k, v in self._streams.items() if k[1] == category}  # one category at a time
            with self.timer.stage("features"):
                cache = self.feature_cache(backbone)
                self._streams[key] = build_stream(samples, backbone, self.config.batch_size, self.progress, cache)
        return self._streams[key]

    def run(self) -> RunSummary:
        cfg, plan = self.config, self.plan
        dataset = self.dataset
        warn_empty_masks(dataset, plan.categories)
        store = self.store
        methods = list(plan.methods)
        inputs = [f for bound in plan.methods.values() for f in bound.method.input_files()]
        if Path(cfg.weights).expanduser().is_file():  # --weights FILE: replacing it must not be resumed over
            inputs.append(Path(cfg.weights).expanduser())
        params = {**cfg.to_params(), "data_root": str(dataset.root.resolve()), "dataset_resolved": dataset.name,
                  FINGERPRINT: dataset_fingerprint(dataset, plan.categories, inputs),
                  "methods_resolved": ",".join(methods), "methods_skipped": ",".join(plan.skipped) or "-"}
        # a new parent run, or the unfinished one of the same config (bench.resume)
        state = self.resume_state = start_or_resume(store, run_name(dataset.name, methods, list(plan.refiners), params),
                                                    params, cfg.resume)
        parent = state.parent_id
        log_config(store, parent, cfg, dataset.root)
        tasks = plan.tasks(state)
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
            self.run_unit(self.store, self.resume_state.parent_id, task)
            return dict(self.timer.seconds)
        finally:
            self.timer = timer

    def run_unit(self, store: Store, parent: str, task: Task) -> None:
        cfg, dataset, category = self.config, self.dataset, task.category
        bound = self.plan.methods[task.method]
        method, backbone = bound.method, bound.backbone
        with self.timer.stage("load"):
            samples = dataset.test(category)
        stream = self.stream(category, samples, backbone)
        eval_size = cfg.eval_size or backbone.input_size
        # torch_threads: a trained decoder's numbers depend on it (float sums in another order over
        # hundreds of steps: pixel AP moves by up to 3 points between 1 and 2 threads)
        unit_params = {"backbone": backbone.name, "backbone_input_size": str(backbone.input_size),
                       "backbone_layers": ",".join(backbone.channels), "torch_threads": str(torch.get_num_threads())}
        with self.timer.stage("load"):
            masks = eval_masks(samples, eval_size, cfg.mask_threshold) if dataset.category_has_masks(category) else None
        groups = make_groups(len(samples), cfg.pgt, cfg.seed)
        with self.timer.stage("scoring"):
            coarse = coarse_scores(method, stream.features, groups, cfg.pgt.reference)
        scores = coarse.image_scores.numpy()
        state = self.resume_state
        for contamination in cfg.pgt.contamination:
            if state is not None and state.block_done(category, task.method, contamination, list(task.refiners)):
                continue  # finished before an interruption (bench.resume)
            built = build_refiners(task.refiners, backbone, cfg)
            with self.timer.stage("pgt"):
                output = run_pgt(stream, coarse, groups, method, backbone, built, cfg.pgt, contamination, cfg.seed)
            self.timer.add("pgt_synth", sum(log.synth_seconds for log in output.log))
            self.timer.add("pgt_train", sum(sum(log.train_seconds.values()) for log in output.log))
            self.timer.add("pgt_refine", sum(sum(log.refine_seconds.values()) for log in output.log))
            with tempfile.TemporaryDirectory() as tmp:
                with self.timer.stage("logging"):
                    artifacts = write_artifacts(Path(tmp), samples, stream, coarse.maps, output, masks, category,
                                                cfg.figures)
                for name, maps in output.maps.items():
                    if state is not None and state.unit_done(category, task.method, contamination, name):
                        continue  # its unit was logged before an interruption; the block is redone for the others
                    with self.timer.stage("metrics"):
                        resized = F.interpolate(maps[:, None], size=(eval_size, eval_size), mode="bilinear",
                                                align_corners=False)[:, 0]
                        metrics = evaluate(scores, stream.labels, resized, masks, groups)
                    unit = {"dataset": dataset.name, "method": task.method, "refiner": name,
                            "contamination": contamination, "category": category, "seed": cfg.seed}
                    metrics.update(group_metrics(output, name, built[name]))
                    with self.timer.stage("bootstrap"):  # intervals and per-group metrics (bench.bootstrap)
                        stats = unit_statistics(scores, stream.labels, resized, masks, groups, cfg.seed, category,
                                                cfg.bootstrap)
                    series = {**stats.series(), "loss": [v for log in output.log for v in log.losses.get(name, [])]}
                    extra = [save(Path(tmp) / name / REPLICATES, stats.replicates)] if cfg.bootstrap else []
                    with self.timer.stage("logging"):
                        store.log_unit(parent, unit, metrics, unit_params, series, artifacts + extra)


def run(config: RunConfig, progress: bool = True) -> RunSummary:
    """Benchmark ``config``'s methods × refiners on its dataset under PGT; everything goes to MLflow."""
    return Runner(config, progress).run()

