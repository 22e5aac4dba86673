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

import functools

import contextlib
from abc import ABC, abstractmethod
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
import warnings
import zipfile
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.backbones._images import as_rgb
from bench.errors import ConfigError, WeightsError
from bench.interfaces import Backbone
from bench.records import FeatureSet
from bench.registry import BACKBONES, CLIP_EXTRAS

ARCHS = ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336", "ViT-B-16-plus-240")
DEFAULT_TAG = "openai"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
PROBE_TIMEOUT_S = 3.0  # network reachability probe before any download attempt


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


# --------------------------------------------------------------------------- weights


def _hub_candidates(cfg: dict) -> list[tuple[str, str]]:
    """(repo id, file name) pairs open_clip would fetch for a tag's ``hf_hub`` entry."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = cfg.get("hf_hub", "")
    if not hub:
        return []
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    names = []
    if filename == HF_WEIGHTS_NAME:
        names.append(HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return [(repo, n) for n in names]


def _url_cache_path(cfg: dict) -> Path | None:
    url = cfg.get("url", "")
    return Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url) if url else None


def cached_checkpoint(cfg: dict) -> Path | None:
    """The tag's weights file if it is already on disk (no network access)."""
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on it
        try_to_load_from_cache = None
    if try_to_load_from_cache is not None:
        for repo, name in _hub_candidates(cfg):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    path = _url_cache_path(cfg)
    return path if path is not None and path.is_file() else None


def _looked_at(cfg: dict) -> str:
    places = []
    if _hub_candidates(cfg):
        try:
            from huggingface_hub import constants

            hub_cache = constants.HF_HUB_CACHE
        except ImportError:  # pragma: no cover
            hub_cache = "~/.cache/huggingface/hub"
        places.append(f"the Hugging Face cache {hub_cache} ({_hub_candidates(cfg)[0][0]})")
    if _url_cache_path(cfg) is not None:
        places.append(str(_url_cache_path(cfg)))
    return " and ".join(places) or "nowhere (the tag has no source)"


def _download_host(cfg: dict) -> tuple[str, int]:
    """Host and port a download of ``cfg`` connects to first (a proxy when one is set)."""
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        parsed = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return parsed.hostname or "", parsed.port or 80
    if cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        parsed = urllib.parse.urlparse(endpoint)
        return parsed.hostname or "", parsed.port or 443
    parsed = urllib.parse.urlparse(cfg.get("url", ""))
    return parsed.hostname or "", parsed.port or 443


def network_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` (DNS included).

    Runs in a daemon thread so that a hanging name lookup cannot hold the caller longer.
    """
    if not host:
        return False
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(outcome and outcome[0])


def _offline(cfg: dict) -> str | None:
    """Why no download can be tried (None: try it)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host, port = _download_host(cfg)
    if not network_reachable(host, port):
        return f"{host}:{port} is unreachable"
    return None


def _weights_help(arch: str, tag: str) -> str:
    return (
        f"Two ways: (1) pass a local checkpoint, `--weights /path/to/checkpoint.pt` (for "
        f"{tag!r}: OpenAI's .pt file or open_clip_pytorch_model.bin / open_clip_model.safetensors "
        f"of the tag's Hugging Face repository), or (2) run once where a network exists: open_clip "
        f"downloads the weights into its cache and later runs find them there offline. "
        f"(`--weights random` gives an untrained {arch}, for tests only.)"
    )


def resolve_tag(arch: str, tag: str) -> tuple[Path, dict]:
    """Local file of pretrained tag ``tag`` for ``arch``, downloaded only if not cached and online."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise WeightsError(
            f"{arch}: {tag!r} is neither an open_clip pretrained tag of this architecture nor an "
            f"existing file. Known tags: {', '.join(known) or 'none'}; or pass a checkpoint path, "
            f"or 'random' (tests only)."
        )
    found = cached_checkpoint(cfg)
    if found is not None:
        return found, cfg
    reason = _offline(cfg)
    if reason is not None:
        raise WeightsError(
            f"{arch} weights {tag!r}: no cached file found (looked in {_looked_at(cfg)}) and no "
            f"network to download it ({reason}). " + _weights_help(arch, tag)
        )
    try:
        target = open_clip.download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001 - network errors of several libraries
        raise WeightsError(
            f"downloading {arch} weights {tag!r} failed: {exc}. " + _weights_help(arch, tag)
        ) from None
    if not target or not Path(target).is_file():
        raise WeightsError(f"downloading {arch} weights {tag!r} gave no file. " + _weights_help(arch, tag))
    return Path(target), cfg


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI's own CLIP releases (``ViT-L-14-336px.pt`` ...) are TorchScript archives.

    torch refuses them under ``weights_only=True`` (open_clip's default); a TorchScript archive
    holds no arbitrary pickled Python (torch dispatches it to ``torch.jit.load``), so for these
    files alone the checkpoint is loaded with ``weights_only=False``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _looks_like_path(weights: str) -> bool:
    return (
        os.sep in weights
        or "/" in weights
        or weights.startswith(("~", "."))
        or weights.lower().endswith(CHECKPOINT_SUFFIXES)
        or Path(weights).is_file()
    )


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs 'initialized randomly' / resize notes on the root logger: keep them out."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive.*")
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated.*")
            yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------- the backbone


class ClipExtra(ABC):
    """An extra output of ``OpenClipBackbone.features`` (registered in ``CLIP_EXTRAS``).

    Created once per backbone with ``backbone=`` and its options; ``compute`` runs under the
    backbone's inference mode and autocast on the preprocessed batch and returns its layers,
    each ``(B, C, h, w)`` as declared in ``channels``. ``identity`` goes into the feature cache key.
    ``compute`` also gets the unnormalised image embedding of the backbone's own pass, so an
    extra that needs it (VCP-CLIP, AdaCLIP) runs no second forward.
    """

    channels: dict[str, int]

    @abstractmethod
    def identity(self) -> dict[str, object]:
        """Everything that determines the extra's output besides the backbone (JSON-able)."""

    @abstractmethod
    def compute(self, x: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed ``(B, 3, S, S)`` batch on the backbone's device, and its unnormalised
        CLIP embedding ``(B, D)`` (``ln_post`` of the class token ``@ proj``) → the extra layers."""


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
        extras: dict[str, dict[str, object]] | None = None,
    ) -> None:
        """An open_clip ViT ``arch`` (e.g. ``ViT-L-14-336``).

        weights: open_clip pretrained tag (default 'openai'), a checkpoint path, or 'random' (tests).
        layers: 'block<N>' names, 1-based (default: 4 evenly spaced blocks).
        input_size: square input side (None: the native size; a multiple of the patch size).
        precision: 'auto' = fp32 on CPU, fp16 autocast on CUDA. quick_gelu: None = as the tag says.
        extras: {name: options} of registered ``CLIP_EXTRAS`` computed with the features (e.g.
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
        elif _looks_like_path(self.weights):
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
            with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
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
        if extras is not None and not isinstance(extras, dict):
            raise ConfigError(f"{arch} extras must be a mapping name -> options, got {extras!r}")
        self.extras_options = {str(k): dict(v or {}) for k, v in sorted((extras or {}).items())}
        self.extras: dict[str, ClipExtra] = {
            name: CLIP_EXTRAS.create(name, backbone=self, **options) for name, options in self.extras_options.items()
        }

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
