"""open_clip ViT backbones: multi-block patch tokens, the CLIP image embedding and the text tower.

Registered names are open_clip's architecture names: ``ViT-B-16``, ``ViT-B-32``, ``ViT-L-14``,
``ViT-L-14-336`` and ``ViT-B-16-plus-240`` (WinCLIP's; LAION weights only, e.g. ``laion400m_e31``)
(``OpenClipBackbone`` itself takes any open_clip ViT architecture).

Conventions (the field's: MuSc, APRIL-GAN, AnomalyCLIP):

- Layers are named ``block<N>``, N **1-based**: ``block6`` is the output of the 6th residual block
  (``model.visual.transformer.resblocks[5]``), i.e. MuSc's ``feature_layers: [5, 11, 17, 23]``
  (0-based, +1 in its code) are ``block6/12/18/24``. Default: 4 evenly spaced blocks, depth·k/4
  (``block6/12/18/24`` on the 24-block ViT-L, ``block3/6/9/12`` on the 12-block ViT-B).
- A layer's map is the block's output tokens without the class token, before ``ln_post``,
  reshaped to ``(B, C, h, w)`` (C = transformer width, h = w = input_size / patch). They come
  from open_clip's own ``VisionTransformer.forward_intermediates`` (one pass, batch-first token
  layout handled by open_clip, class token split off there) rather than from hand-made forward
  hooks on ``transformer.resblocks[i]``: same tensors, nothing to keep in sync.
- ``embedding`` is the projected image embedding (``ln_post`` of the class token, ``@ proj``),
  L2-normalised: what ``model.encode_image(x, normalize=True)`` returns.
- ``project_tokens`` maps patch tokens into the joint image-text space (``ln_post`` then
  ``@ proj``, not normalised) and ``encode_text`` gives L2-normalised text embeddings: the two
  halves that CLIP methods (APRIL-GAN, WinCLIP, AnomalyCLIP) compare.

Input size: ``input_size=None`` is the architecture's native size (224, or 336 for
ViT-L-14-336). Another size (MuSc and APRIL-GAN use 518 on ViT-L-14-336: a 37×37 grid) builds the
model at that size and open_clip's ``load_checkpoint`` resizes the learned position embedding
with its ``resize_pos_embed`` helper (bicubic interpolation of the patch grid, class token kept).
The size must be a multiple of the patch size.

Weights (``weights=``):

- an open_clip pretrained tag (default ``"openai"``). The file is looked up in the local caches
  first (Hugging Face hub cache for the tag's ``hf_hub`` entry, ``~/.cache/clip`` for its URL);
  only when it is not there and a network is reachable is it downloaded by open_clip. Offline
  with no cached file gives a ``WeightsError`` at once (the reachability probe takes at most
  ~3 s; open_clip's own download would retry for ~45 s before failing);
- a local checkpoint path (``.pt`` from OpenAI, ``open_clip_pytorch_model.bin`` /
  ``.safetensors`` from the hub, any state dict open_clip can load). OpenAI's own ``.pt`` files
  are TorchScript archives, which torch refuses under ``weights_only=True``: they alone are
  loaded with ``weights_only=False`` (torch hands them to ``torch.jit.load``, no pickled Python);
  a missing or unloadable file is a ``WeightsError`` naming it;
- ``"random"``: untrained, seeded (seed 0), for tests only; never chosen implicitly.

QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, which open_clip's plain
``ViT-*`` configs do not use (open_clip only warns about the mismatch). ``quick_gelu=None``
takes the tag's setting; for a checkpoint file (and for ``random``) it takes the setting of the
architecture's ``openai`` tag (True for the four OpenAI architectures; False without such a tag, as
for ``ViT-B-16-plus-240``), since OpenAI's weights are what the field's methods use. Pass ``quick_gelu=False`` for a LAION/DataComp checkpoint file.

Preprocessing: resize to ``input_size × input_size`` (bicubic, aspect not kept, as MuSc and
APRIL-GAN do before their identity centre crop), then OpenAI's mean/std (or the tag's).
Precision: fp32 on CPU; on CUDA, ``precision="auto"`` is fp16 autocast as the official MuSc and
APRIL-GAN code (``torch.cuda.amp.autocast()``); "bf16" and "fp32" can be asked for. Outputs are
always float32.
"""
from __future__ import annotations

import contextlib
import functools
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.backbones._clip_weights import is_torchscript_archive, looks_like_path, quiet_open_clip, resolve_tag
from bench.backbones._images import as_rgb
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone, BackboneExtra
from bench.records import FeatureSet
from bench.registry import BACKBONES

ARCHS = ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336", "ViT-B-16-plus-240")
DEFAULT_TAG = "openai"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def default_layers(depth: int, count: int = 4) -> tuple[str, ...]:
    """``count`` evenly spaced blocks, 1-based, the last one included: 24 → block6/12/18/24."""
    blocks = sorted({max(1, depth * (i + 1) // count) for i in range(count)})
    return tuple(f"block{b}" for b in blocks)


def parse_layer(name: str, depth: int) -> int:
    """``block<N>`` (1-based) → 0-based index into ``transformer.resblocks``."""
    if name.startswith("block") and name[5:].isdigit() and 1 <= int(name[5:]) <= depth:
        return int(name[5:]) - 1
    raise ConfigError(
        f"unknown ViT layer {name!r}: use 'block1' .. 'block{depth}' (outputs of the 1-based "
        f"residual blocks, e.g. {', '.join(default_layers(depth))})"
    )


# --------------------------------------------------------------------------- the backbone


class OpenClipBackbone(Backbone):
    """Frozen open_clip ViT: patch tokens of chosen blocks, CLIP image embedding, text tower."""

    resample = "bicubic"

    def __init__(
        self,
        arch: str,
        weights: str = DEFAULT_TAG,
        layers: tuple[str, ...] | str | None = None,
        input_size: int | None = None,
        device: str = "cpu",
        precision: str = "auto",
        quick_gelu: bool | None = None,
        extras: dict[type[BackboneExtra], dict[str, object]] | None = None,
    ) -> None:
        """An open_clip ViT ``arch`` (e.g. ``ViT-L-14-336``).

        weights: open_clip pretrained tag (default 'openai'), a checkpoint path, or 'random' (tests).
        layers: 'block<N>' names, 1-based (default: 4 evenly spaced blocks).
        input_size: square input side (None: the native size; a multiple of the patch size).
        precision: 'auto' = fp32 on CPU, fp16 autocast on CUDA. quick_gelu: None = as the tag says.
        extras: {BackboneExtra class: options} computed with the features in the same pass (e.g.
        WinCLIP's window embeddings); methods ask for them through their backbone options.
        """
        import open_clip
        from open_clip.transformer import VisionTransformer

        config = open_clip.get_model_config(arch)
        if config is None:
            raise ConfigError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
        vision = config["vision_cfg"]
        if "timm_model_name" in vision or not isinstance(vision.get("layers"), int):
            raise ConfigError(f"{arch} is not a plain open_clip ViT (timm or ResNet towers are not supported)")
        self.name = arch
        self.arch = arch
        self.depth = int(vision["layers"])
        self.width = int(vision["width"])
        self.patch_size = int(vision["patch_size"])
        self.native_size = int(vision["image_size"] if np.isscalar(vision["image_size"]) else vision["image_size"][0])

        if layers is None:
            layers = default_layers(self.depth)
        if isinstance(layers, str):
            layers = tuple(s.strip() for s in layers.split(",") if s.strip())
        layers = tuple(layers)
        if not layers:
            raise ConfigError(f"{arch} needs at least one layer (e.g. {default_layers(self.depth)[-1]})")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"{arch} layers repeated: {', '.join(layers)}")
        self.layers = layers
        self._taps = {layer: parse_layer(layer, self.depth) for layer in layers}
        self._indices = sorted(set(self._taps.values()))

        size = self.native_size if input_size is None else int(input_size)
        if size < self.patch_size or size % self.patch_size:
            raise ConfigError(
                f"{arch} input_size must be a positive multiple of its patch size {self.patch_size} "
                f"(e.g. {self.native_size}, or 518 = 37x14 for the /14 models), got {input_size}"
            )
        self.input_size = size

        self.device = torch.device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.precision = precision

        # weights → checkpoint file (or none), quick_gelu, mean/std
        self.weights = str(weights)
        self.weights_file: Path | None = None  # the checkpoint loaded (a tag's cached file too)
        self.weights_tag: str | None = None  # the pretrained tag, when weights is one
        openai_cfg = open_clip.get_pretrained_cfg(arch, DEFAULT_TAG) or {}
        tag_cfg: dict = {}
        if self.weights == "random":
            pass
        elif looks_like_path(self.weights):
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise WeightsError(
                    f"{arch} checkpoint {path} not found (weights={self.weights!r} is taken as a file "
                    f"path). Pass an existing file, an open_clip tag such as 'openai', or 'random' "
                    f"(tests only)."
                )
            self.weights_file = path.resolve()
        else:
            self.weights_file, tag_cfg = resolve_tag(arch, self.weights)
            self.weights_tag = self.weights
        if quick_gelu is None:
            quick_gelu = bool((tag_cfg or openai_cfg).get("quick_gelu", False))
        self.quick_gelu = bool(quick_gelu)
        source = tag_cfg or openai_cfg
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.mean = tuple(source.get("mean", OPENAI_DATASET_MEAN))
        self.std = tuple(source.get("std", OPENAI_DATASET_STD))

        # The model: built at input_size; a checkpoint's position embedding is resized on load
        # by open_clip (load_checkpoint → resize_pos_embed, bicubic over the patch grid).
        force_size = None if size == self.native_size else size
        try:
            with quiet_open_clip(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(
                    arch,
                    pretrained=str(self.weights_file) if self.weights_file else None,
                    precision="fp32",
                    device="cpu",
                    force_quick_gelu=self.quick_gelu,
                    force_image_size=force_size,
                    weights_only=not (self.weights_file and is_torchscript_archive(self.weights_file)),
                )
        except Exception as exc:  # torch.load / safetensors / strict-load errors of many types
            if self.weights_file is None:
                raise
            raise WeightsError(
                f"cannot load {arch} weights from {self.weights_file}: {exc}"
            ) from None
        if not isinstance(getattr(model, "visual", None), VisionTransformer):
            raise ConfigError(f"{arch}: open_clip built no VisionTransformer image tower")
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.extras = self._create_extras(extras)

    def _create_extras(self, extras: dict[type[BackboneExtra], dict[str, object]] | None) -> dict[str, BackboneExtra]:
        """``{name: extra}`` of the requested ``BackboneExtra`` classes, created on this backbone, by name."""
        if extras is not None and not isinstance(extras, dict):
            raise ConfigError(f"{self.arch} extras must be a mapping BackboneExtra class -> options, got {extras!r}")
        created: dict[str, BackboneExtra] = {}
        for cls, options in (extras or {}).items():
            if not (isinstance(cls, type) and issubclass(cls, BackboneExtra)):
                raise ConfigError(f"{self.arch} extras: {cls!r} is not a BackboneExtra class (bench.interfaces)")
            if cls.name in created:
                raise ConfigError(f"{self.arch} extras: two extras named {cls.name!r}")
            created[cls.name] = cls(self, **dict(options or {}))
        return dict(sorted(created.items()))

    # -- declared properties
    @property
    def channels(self) -> dict[str, int]:
        return {name: self.width for name in self.layers}

    @property
    def extra_channels(self) -> dict[str, int]:
        return {name: c for extra in self.extras.values() for name, c in extra.channels.items()}

    @property
    def strides(self) -> dict[str, int]:
        return {name: self.patch_size for name in self.layers}

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def embedding_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @cached_property
    def tokenizer(self):
        """open_clip's tokenizer of the architecture (bundled BPE vocabulary: no download)."""
        import open_clip

        return open_clip.get_tokenizer(self.arch)

    def identity(self) -> dict[str, object]:
        """Cache identity: a tag stands for its weights (no file hash); a file is hashed."""
        ident = super().identity()
        ident.update(arch=self.arch, quick_gelu=self.quick_gelu, precision=self.precision)
        if self.extras:  # absent otherwise: existing cache keys stay valid
            ident["extras"] = {name: extra.identity() for name, extra in self.extras.items()}
        if self.weights_tag is not None:
            ident["weights_file"] = None
        return ident

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- contract
    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """H×W×3 uint8 → (B, 3, S, S): bicubic resize (aspect not kept), CLIP mean/std."""
        size = self.input_size
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        out = []
        for image in images:
            array = as_rgb(image)
            if array.shape[:2] != (size, size):
                array = np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))
            x = torch.tensor(array).permute(2, 0, 1).float().div_(255.0)
            out.append((x - mean) / std)
        if not out:
            return torch.empty(0, 3, size, size)
        return torch.stack(out)

    def features(self, x: torch.Tensor) -> FeatureSet:
        """Patch tokens of the chosen blocks ``(B, C, h, w)`` and the normalised CLIP embedding."""
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            out = self.model.visual.forward_intermediates(
                x.to(self.device, torch.float32),
                indices=self._indices,
                normalize_intermediates=False,
                output_fmt="NCHW",
            )
            extra = {
                name: value
                for e in self.extras.values()
                for name, value in e.compute(x.to(self.device, torch.float32), out["image_features"]).items()
            }
        maps = dict(zip(self._indices, out["image_intermediates"]))
        # clone outside inference mode: ordinary tensors a refiner may train on
        layers = {name: maps[i].clone().float() for name, i in self._taps.items()}
        layers.update({name: value.clone().float() for name, value in extra.items()})
        embedding = F.normalize(out["image_features"].clone().float(), dim=-1)
        return FeatureSet(layers=layers, embedding=embedding)

    def encode_text(self, prompts: list[str], normalize: bool = True) -> torch.Tensor:
        """``(N, D)`` text embeddings of ``prompts`` (frozen text tower), L2-normalised unless ``normalize=False``."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            z = self.model.encode_text(tokens)
        z = z.clone().float()  # outside inference mode: an ordinary tensor
        return F.normalize(z, dim=-1) if normalize else z

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, C, h, w)`` → joint-space tokens ``(B, D, h, w)``: ``ln_post`` then ``proj``.

        Not normalised. Runs with autograd (frozen weights): gradients reach ``tokens``, for
        methods that train something before the projection.
        """
        visual = self.model.visual
        x = tokens.to(self.device, visual.ln_post.weight.dtype).permute(0, 2, 3, 1)
        x = visual.ln_post(x)
        if visual.proj is not None:
            x = x @ visual.proj
        return x.permute(0, 3, 1, 2)


for _arch in ARCHS:  # the class's docstring documents the options; `arch` is bound per entry
    BACKBONES.register(
        _arch, f"open_clip {_arch} (CLIP, weights: a pretrained tag, a checkpoint file, or random): "
               "patch tokens of 4 blocks + image embedding + text tower",
    )(functools.partial(OpenClipBackbone, _arch))
