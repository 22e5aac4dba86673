"""Refiner decoders and baselines; each module registers itself in ``bench.registry.REFINERS``."""
