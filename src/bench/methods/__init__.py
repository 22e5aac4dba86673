"""Zero-shot anomaly detection methods; each module registers itself in ``bench.registry.METHODS``."""
