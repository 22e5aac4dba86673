"""bench.pixelpasses: the bucket ranges and the order-preserving keys of the pixel metrics' passes."""

import numpy as np

from bench import pixelpasses


def test_ranges_split_buckets_from_the_top_within_the_budget():
    cost = np.array([0, 5, 0, 3, 9, 2, 0])
    assert list(pixelpasses.ranges(cost, 6)) == [(5, 6), (4, 5), (2, 4), (0, 2)]
    assert list(pixelpasses.ranges(np.zeros(4, int), 6)) == []


def test_keys_order_as_the_floats():
    values = np.array(
        [-np.finfo(np.float32).max, -2.5, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 1.0, 3e38],
        np.float32,
    )
    keys = pixelpasses.score_keys(values).astype(np.int64)
    assert (np.sign(np.diff(keys)) == np.sign(np.diff(values))).all()  # -0.0 == +0.0 only
    assert keys[4] == keys[5]
