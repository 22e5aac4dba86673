"""Input checks shared by the backbones' ``preprocess``."""
from __future__ import annotations

import numpy as np

from bench.errors import ConfigError


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An H×W×3 uint8 array (H×W grayscale is repeated to 3 channels); anything else is refused."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ConfigError(f"expected H×W×3 uint8 images, got shape {array.shape} dtype {array.dtype}")
    return np.ascontiguousarray(array)
