"""Per-stage wall-clock timings, accumulated over a run and logged to MLflow."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def as_metrics(self) -> dict[str, float]:
        return {f"time_{name}_s": value for name, value in self.seconds.items()}
