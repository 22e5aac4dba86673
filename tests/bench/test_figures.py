"""Figure grids: any file name as a row title, including one whose bytes are not UTF-8."""
import os

import numpy as np
import torch

from bench.figures import printable, save_grid


def test_a_file_name_that_is_not_utf8_is_drawn(tmp_path):
    """Issue 17: a non-UTF-8 file name crashed the figure step after all the compute."""
    title = os.fsdecode(b"crack/caf\xe9_000")  # how Python holds such a name: a lone surrogate
    assert printable(title) == "crack/caf\ufffd_000"
    maps = torch.rand(1, 8, 8)
    path = save_grid(tmp_path / "grid.png", np.zeros((1, 8, 8, 3), np.uint8), maps > 0.5, maps, {"none": maps},
                     titles=[title])
    assert path.stat().st_size > 0
