"""bench.evaluation's reading path: batched resizing, masks without decoding images, threads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench import evaluation
from bench.data import open_dataset
from bench.datasets.synthetic import generate
from bench.errors import DatasetError
from bench.evaluation import eval_masks, file_mask, parallel_map, resize_each


def per_image(arrays: list[np.ndarray], size: int) -> torch.Tensor:
    """The plain form: one bilinear interpolation per array."""
    return torch.stack([F.interpolate(torch.as_tensor(a, dtype=torch.float32)[None, None], size=(size, size),
                                      mode="bilinear", align_corners=False)[0, 0] for a in arrays])


def test_resize_each_equals_one_interpolation_per_array_with_mixed_shapes():
    rng = np.random.default_rng(0)
    arrays = [rng.random(shape).astype(np.float32) for shape in [(16, 16), (20, 24), (16, 16), (9, 7), (20, 24)]]
    arrays.append(rng.random((16, 16)) > 0.5)  # bool masks too
    torch.testing.assert_close(resize_each(arrays, 16), per_image(arrays, 16), rtol=0, atol=1e-6)
    torch.testing.assert_close(resize_each(arrays, 11), per_image(arrays, 11), rtol=0, atol=1e-6)
    assert resize_each([], 8).shape == (0, 8, 8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("syn"), seed=0, categories=["tile"], n_test=12, n_train=0, size=48, progress=False)
    return open_dataset(root)


@pytest.mark.parametrize("size", [48, 32])
def test_eval_masks_equal_the_resized_sample_masks_and_skip_decoding_images(dataset, monkeypatch, size):
    monkeypatch.setattr(evaluation, "READ_THREADS", 2)  # 12 samples: the threaded path
    samples = dataset.test("tile")
    masks = eval_masks(samples, size, 0.5)
    assert all("image" not in vars(s) for s in samples)  # no image was decoded
    expected = per_image([s.mask for s in dataset.test("tile")], size) > 0.5
    assert masks.dtype == torch.bool and torch.equal(masks, expected)
    assert masks.sum() > 0 and masks[[s.label == 0 for s in samples]].sum() == 0


def test_a_mask_of_the_wrong_size_is_still_an_error_that_names_the_file(dataset):
    samples = dataset.test("tile")
    bad = next(s for s in samples if s.mask_path is not None)
    small = dataset.root / "small_mask.png"
    Image.new("L", (5, 5)).save(small)
    bad.mask_path = small
    with pytest.raises(DatasetError, match="small_mask.png"):
        file_mask(bad)


def test_parallel_map_keeps_order_and_raises_the_first_error(monkeypatch):
    monkeypatch.setattr(evaluation, "READ_THREADS", 2)
    assert parallel_map(lambda x: x * x, list(range(10))) == [x * x for x in range(10)]

    def fail(x: int) -> int:
        if x >= 5:
            raise ValueError(f"bad {x}")
        return x

    with pytest.raises(ValueError, match="bad 5"):
        parallel_map(fail, list(range(10)))
