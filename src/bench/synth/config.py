"""``SynthConfig``: the options of PGT's anomaly synthesis, ``pgt.synth.*`` of a run."""
from __future__ import annotations

from dataclasses import dataclass

from bench.errors import ConfigError

from .textures import _texture_files

RECIPES: tuple[str, ...] = ("texture", "cutpaste", "pattern")
FOREGROUND_MODES: tuple[str, ...] = ("none", "border")


@dataclass
class SynthConfig:
    """Options of the anomaly synthesis, ``pgt.synth.*`` of a run; validated on construction and by
    ``validate`` (``ConfigError`` naming ``pgt.synth.<key>``).

    ``recipes``: fill recipes to draw from uniformly, any of ``texture``, ``cutpaste``,
    ``pattern``. ``perlin_scale_range``: exponents ``[lo, hi)`` of the Perlin lattice resolution
    ``2**k`` per axis (DRAEM: ``(0, 6)``). ``threshold``: Perlin threshold, noise in [-1, 1]
    (DRAEM: 0.5). ``beta_range``: opacity of the ``texture`` fill. ``min_area_fraction`` /
    ``max_area_fraction``: bounds on the mask area as a fraction of the usable region; masks
    outside them are redrawn. ``texture_dir``: optional folder of texture images (searched
    recursively, e.g. DTD's ``images/``); ``None`` uses procedural textures.
    ``foreground``: ``none`` (whole image) or ``border`` (pixels unlike the median border colour,
    for objects on a plain background; falls back to the whole image when the estimate is
    implausible).
    """

    recipes: tuple[str, ...] = RECIPES
    perlin_scale_range: tuple[int, int] = (0, 6)
    threshold: float = 0.5
    beta_range: tuple[float, float] = (0.1, 1.0)
    min_area_fraction: float = 0.002
    max_area_fraction: float = 0.3
    texture_dir: str | None = None
    foreground: str = "none"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "pgt.synth") -> "SynthConfig":
        """Check every option; errors name ``<prefix>.<key>``."""
        recipes = tuple(self.recipes) if not isinstance(self.recipes, str) else (self.recipes,)
        self.recipes = recipes
        if not recipes:
            raise ConfigError(f"{prefix}.recipes is empty; choose one or more of {', '.join(RECIPES)}")
        unknown = [r for r in recipes if r not in RECIPES]
        if unknown:
            raise ConfigError(
                f"{prefix}.recipes: unknown recipe {', '.join(map(repr, unknown))}; "
                f"valid recipes are {', '.join(RECIPES)}"
            )
        for key in ("perlin_scale_range", "beta_range"):
            if len(tuple(getattr(self, key))) != 2:
                raise ConfigError(f"{prefix}.{key}={getattr(self, key)!r}: need two values [lo, hi]")
        lo, hi = self.perlin_scale_range
        if not (int(lo) == lo and int(hi) == hi and 0 <= lo < hi <= 10):
            raise ConfigError(
                f"{prefix}.perlin_scale_range={self.perlin_scale_range!r}: need integers 0 <= lo < hi <= 10 "
                "(lattice resolution 2**k, k drawn from [lo, hi))"
            )
        if not -1.0 < self.threshold < 1.0:
            raise ConfigError(f"{prefix}.threshold={self.threshold}: must lie in (-1, 1) (Perlin noise range)")
        b0, b1 = self.beta_range
        if not 0.0 < b0 <= b1 <= 1.0:
            raise ConfigError(f"{prefix}.beta_range={self.beta_range!r}: need 0 < lo <= hi <= 1")
        if not 0.0 < self.min_area_fraction < self.max_area_fraction <= 1.0:
            raise ConfigError(
                f"{prefix}.min_area_fraction={self.min_area_fraction}, max_area_fraction="
                f"{self.max_area_fraction}: need 0 < min < max <= 1"
            )
        if self.foreground not in FOREGROUND_MODES:
            raise ConfigError(
                f"{prefix}.foreground={self.foreground!r}: valid values are {', '.join(FOREGROUND_MODES)}"
            )
        if self.texture_dir is not None:
            _texture_files(str(self.texture_dir))  # raises ConfigError naming the folder
        return self
