"""Per-layer linear adapters on patch tokens (APRIL-GAN's ``LinearLayer``, reused by VCP-CLIP) and the
mapping of the official ``fc.<i>`` keys onto them."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn


class Adapters(nn.Module):
    """One linear layer per tapped layer: patch tokens of ``width`` → the joint space ``dim_out``."""

    def __init__(self, layers: Sequence[str], dim_in: dict[str, int], dim_out: int) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.dim_in = {name: int(dim_in[name]) for name in self.layers}
        self.dim_out = int(dim_out)
        self.linears = nn.ModuleDict({name: nn.Linear(self.dim_in[name], self.dim_out) for name in self.layers})

    def forward(self, name: str, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` patch map → ``(B, h·w, D)`` adapted tokens (not normalised)."""
        return self.linears[name](tokens.flatten(2).transpose(1, 2))


def depth_order(layers: Sequence[str]) -> tuple[str, ...]:
    """Layers in increasing depth (``block<N>`` by N); other names keep the given order."""
    layers = tuple(layers)
    numbers = [re.fullmatch(r"block(\d+)", name) for name in layers]
    if all(numbers):
        return tuple(sorted(layers, key=lambda name: int(name[5:])))
    return layers


def linear_layers_from_official(state: dict[str, torch.Tensor], layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Official ``LinearLayer`` keys (``fc.<i>.weight|bias``) → ours (``linears.<layer_i>.*``).

    ``layers`` in increasing depth: ``fc.0`` is the shallowest tapped layer. Raises ValueError
    (turned into a WeightsError naming the file by the loader) when the keys do not fit.
    """
    pattern = re.compile(r"fc\.(\d+)\.(weight|bias)")
    found: dict[int, set[str]] = {}
    for key in state:
        match = pattern.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected key {key!r} (an official APRIL-GAN LinearLayer has fc.<i>.weight/bias only)")
        found.setdefault(int(match.group(1)), set()).add(match.group(2))
    indices = sorted(found)
    if indices != list(range(len(layers))):
        raise ValueError(
            f"it holds {len(indices)} linear layer(s) (fc.{', fc.'.join(map(str, indices))}) but the backbone taps "
            f"{len(layers)} layer(s) ({', '.join(layers)}); the official checkpoints hold 4, for blocks 6/12/18/24"
        )
    for i in indices:
        if found[i] != {"weight", "bias"}:
            raise ValueError(f"fc.{i} lacks its {'bias' if 'weight' in found[i] else 'weight'}")
    return {f"linears.{layers[i]}.{part}": state[f"fc.{i}.{part}"] for i in indices for part in ("weight", "bias")}


def check_adapter_shapes(state: dict[str, torch.Tensor], adapters: Adapters) -> None:
    for name in adapters.layers:
        expected = {"weight": (adapters.dim_out, adapters.dim_in[name]), "bias": (adapters.dim_out,)}
        for part, shape in expected.items():
            key = f"linears.{name}.{part}"
            if key not in state:
                raise ValueError(f"no {key}")
            got = tuple(state[key].shape)
            if got != shape:
                raise ValueError(
                    f"{key} has shape {got}, the backbone needs {shape} (width {adapters.dim_in[name]} → "
                    f"embedding dim {adapters.dim_out}); the checkpoint was made for another backbone"
                )


