"""Per-stage wall-clock timings, accumulated over a run and logged to MLflow.

A run's stages (``bench.api``): load (masks; images are decoded lazily, inside features),
features, scoring, pgt (split further into pgt_synth: synthesis and coarse scoring of the
training images, pgt_train and pgt_refine; these three are parts of pgt, not added to it),
metrics, and logging (opening the MLflow store and artifacts included). ``total`` is the wall
time since the timer was created; what it holds beyond the stages is harness overhead that no
stage names (creating methods and backbones, preflight checks, starting the run).
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Account ``seconds`` measured elsewhere to stage ``name``."""
        self.seconds[name] += seconds

    def as_metrics(self) -> dict[str, float]:
        """``time_<stage>_s`` for every stage, and ``time_total_s``."""
        metrics = {f"time_{name}_s": value for name, value in self.seconds.items()}
        metrics["time_total_s"] = time.perf_counter() - self.started
        return metrics
