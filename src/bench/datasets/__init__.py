"""Dataset loaders; each module registers itself in ``bench.registry.DATASETS``."""
