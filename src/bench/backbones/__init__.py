"""Frozen feature extractors; each module registers itself in ``bench.registry.BACKBONES``."""
