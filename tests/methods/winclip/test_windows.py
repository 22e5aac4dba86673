"""Window embeddings (bench/methods/winclip/windows.py) on a tiny random open_clip ViT.

Each window's embedding is pinned against a direct computation: the patch embedding, class token
and position embedding written out by hand, the window's tokens picked by their grid
coordinates, then ``ln_pre``, the residual blocks one by one, ``ln_post`` of the class token and
``proj``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.backbones import openclip as oc
from bench.errors import ConfigError
from bench.methods.winclip import windows as W
from fakes import registered_tiny_vit

ARCH = "bench-test-window-vit"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def arch():
    """A tiny ViT (4x4 grid of 8 px patches at 32 px) in open_clip's registry for this module only."""
    with registered_tiny_vit(ARCH, embed_dim=16, width=32, layers=2, text_width=16, text_heads=1) as name:
        yield name


def by_hand(backbone: oc.OpenClipBackbone, x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """``(B, D)`` normalised embedding of one window, computed directly from the model's parts."""
    visual = backbone.model.visual
    grid = backbone.grid
    with torch.no_grad():
        patches = visual.conv1(x).flatten(2).transpose(1, 2)  # (B, h·w, C), row-major
        pos = visual.positional_embedding
        rows = [r * grid + c for r in range(top, top + size) for c in range(left, left + size)]
        cls = (visual.class_embedding + pos[0]).expand(len(x), 1, -1)
        seq = visual.ln_pre(torch.cat([cls, (patches + pos[1:])[:, rows]], dim=1))
        for block in visual.transformer.resblocks:
            seq = block(seq)
        return F.normalize(visual.ln_post(seq[:, 0]) @ visual.proj, dim=-1)


def test_window_index_lists_the_patches_of_each_window_row_major():
    index = W.window_index((3, 4), 2)
    assert index.tolist() == [
        [0, 1, 4, 5], [1, 2, 5, 6], [2, 3, 6, 7],
        [4, 5, 8, 9], [5, 6, 9, 10], [6, 7, 10, 11],
    ]
    assert W.window_index((4, 4), 4).tolist() == [list(range(16))]
    assert W.window_index((15, 15), 2).shape == (196, 4) and W.window_index((15, 15), 3).shape == (169, 9)


def test_every_window_is_the_clip_embedding_of_its_own_tokens(arch):
    backbone = oc.OpenClipBackbone(arch, weights="random", extras={W.WindowEmbeddings: {"sizes": [2, 3]}})
    assert backbone.extra_channels == {"window2": 16, "window3": 16}
    assert "window2" not in backbone.channels  # not offered to refiners
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fs = backbone.features(x)
    assert fs.layers["window2"].shape == (2, 16, 3, 3) and fs.layers["window3"].shape == (2, 16, 2, 2)
    for size in (2, 3):
        for top in range(5 - size):
            for left in range(5 - size):
                torch.testing.assert_close(fs.layers[f"window{size}"][:, :, top, left], by_hand(backbone, x, top, left, size))
    # the window that covers the whole grid is the image itself
    whole = oc.OpenClipBackbone(arch, weights="random", extras={W.WindowEmbeddings: {"sizes": 4}})
    torch.testing.assert_close(whole.features(x).layers["window4"][:, :, 0, 0], fs.embedding)
    # and a window is not its image: the other patches do not reach it
    assert not torch.allclose(fs.layers["window3"][:, :, 0, 0], fs.embedding, atol=1e-3)


def test_passes_are_split_without_changing_the_result(arch, monkeypatch):
    backbone = oc.OpenClipBackbone(arch, weights="random", extras={W.WindowEmbeddings: {"sizes": [2]}})
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    whole = backbone.features(x).layers["window2"]
    monkeypatch.setattr(W, "CHUNK_TOKENS", 11)  # two 5-token windows per pass, across image borders
    torch.testing.assert_close(backbone.features(x).layers["window2"], whole)


def test_the_official_grid_has_196_and_169_windows(arch):
    extras = {W.WindowEmbeddings: {"sizes": (2, 3)}}
    backbone = oc.OpenClipBackbone(arch, weights="random", input_size=120, extras=extras)
    assert backbone.grid == 15  # as ViT-B-16-plus-240 at 240 px
    x = torch.randn(1, 3, 120, 120, generator=torch.Generator().manual_seed(2))
    fs = backbone.features(x)
    assert fs.layers["window2"].shape == (1, 16, 14, 14) and fs.layers["window3"].shape == (1, 16, 13, 13)
    torch.testing.assert_close(fs.layers["window3"][:, :, 12, 5], by_hand(backbone, x, 12, 5, 3))
    assert torch.allclose(fs.layers["window2"].norm(dim=1), torch.ones(1, 14, 14))


def test_sizes_are_checked_and_part_of_the_cache_identity(arch):
    for bad in ([0], [5], [2, 2], []):
        with pytest.raises(ConfigError, match="window sizes"):
            oc.OpenClipBackbone(arch, weights="random", extras={W.WindowEmbeddings: {"sizes": bad}})
    a = oc.OpenClipBackbone(arch, weights="random", extras={W.WindowEmbeddings: {"sizes": [2, 3]}})
    b = oc.OpenClipBackbone(arch, weights="random", extras={W.WindowEmbeddings: {"sizes": [2]}})
    assert a.identity()["extras"] == {"windows": {"sizes": [2, 3]}}
    assert a.identity() != b.identity()
