"""Anomaly synthesis cost per image (PGT makes pgt.synth_per_group of them per group)."""
import numpy as np
import pytest

from bench.synth import SynthConfig, synthesize


@pytest.mark.parametrize("recipe", ["texture", "cutpaste", "pattern"])
def test_synthesis_256px(benchmark, recipe):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(3)]
    config = SynthConfig(recipes=(recipe,))
    benchmark.group = "synthesis 256px"
    benchmark(lambda: synthesize(images[0], rng, images[1:], config))
