"""AdaCLIP's prompted visual forward: hybrid (static + dynamic) learnable prompt tokens in the ViT.

Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024, arXiv 2407.15795; official code caoyunkang/AdaCLIP (``method/adaclip.py``:
``PromptLayer.forward_visual``, ``AdaCLIP.encode_image``, ``generate_and_set_dynamic_promtps``;
read for the facts, this is our own code). The method itself is ``bench.methods.adaclip``.

The forward, for prompt length L and prompting depth J (official 5 and 4):

1. Dynamic prompts: the frozen CLIP image embedding ``e`` of the image (unprompted forward,
   class token after ``ln_post`` and ``proj``, not normalised, no gradient) goes through L linear
   layers ``embed_dim → width``: ``d = (W_1 e + b_1, ..., W_L e + b_L)``, ``(B, L, width)``.
2. Prompted forward: after ``ln_pre``, for blocks j = 0 .. J-1 the prompt ``s_j + d`` (``s_j`` the
   static tokens of block j, ``(L, width)``) is **appended** after the class and patch tokens
   before block 0 and **replaces** the last L tokens before blocks 1 .. J-1; from block J on the
   prompt tokens just flow on. Attention is unmasked: every token sees the prompts.
3. Outputs, prompts stripped: the patch tokens of each tapped block (before ``ln_post``, class
   token dropped) and the prompted image embedding (``ln_post`` of the class token, ``@ proj``).

FeatureSet layers added (``channels``): ``adaclip_<block>`` ``(B, width, h, w)`` for each of the
backbone's layers, ``adaclip_image`` ``(B, embed_dim, 1, 1)`` (prompted embedding) and
``adaclip_clip_image`` ``(B, embed_dim, 1, 1)`` (the unprompted embedding ``e``, which the method
also needs for its dynamic *text* prompts). ``forward`` runs with autograd (training reaches
the prompts through the frozen tower); ``compute`` is the same code under the backbone's
inference mode and autocast.

Learned parameters come from the ``checkpoint`` option (``bench.methods._auxiliary.
learned_source``: a file, ``"untrained"``, or None = untrained on a random-weights backbone),
read by ``read_checkpoint``, which also serves the method: the official file (``torch.save`` of
the trainer's learnable entries, keys ``clip_model.<name>``, ``OFFICIAL_KEYS``) or bench's own.
The cache identity carries the sha256 of the file (or the untrained seed, or a digest of
parameters trained in this process), so features of different checkpoints never mix.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from bench.backbones.openclip import ClipExtra, OpenClipBackbone, parse_layer
from bench.cache import file_digest
from bench.errors import ConfigError, WeightsError
from bench.methods._auxiliary import is_bench_checkpoint, learned_source, load_checkpoint
from bench.registry import CLIP_EXTRAS

NAME = "adaclip_prompts"
OFFICIAL_LENGTH = 5  # train.py --prompting_length
OFFICIAL_DEPTH = 4  # train.py --prompting_depth
FORMAT = "bench.adaclip.prompts"
FORMAT_VERSION = 1
OFFICIAL_PREFIX = "clip_model."  # the trainer's state_dict wraps the AdaCLIP module
# Official key prefix → ours. ``patch.<i>`` is the i-th tapped layer in increasing depth.
OFFICIAL_KEYS = {
    "visual_prompter.static_prompts.": "visual.static.",
    "dynamic_visual_prompt_generator.head.": "visual.generator.",
    "text_prompter.static_prompts.": "text.static.",
    "dynamic_text_prompt_generator.head.": "text.generator.",
    "patch_token_layer.head.": "patch.",
    "cls_token_layer.head.0.": "image.",
}
CHECKPOINT_HELP = (
    "Two ways: (1) an official checkpoint of caoyunkang/AdaCLIP (pretrained_visa_clinicdb.pth, trained on "
    "VisA + ClinicDB, to test on MVTec AD; pretrained_mvtec_colondb.pth, trained on MVTec AD + ColonDB, to "
    "test on VisA; for ViT-L-14-336 with openai weights at 518 px), or (2) prompts trained on the auxiliary "
    "dataset with bench.methods.adaclip.train_prompts(method, backbone, dataset, save=PATH)."
)


class HybridPrompts(nn.Module):
    """Static prompt tokens per prompted block and a generator of dynamic ones (one side: visual or text).

    ``static.<j>``: ``(length, channels)``, initialised N(0, 0.02²) as official; ``generator.<i>``:
    ``nn.Linear(embed_dim, channels)`` making the i-th dynamic token from an image embedding.
    """

    def __init__(self, channels: int, embed_dim: int, length: int, depth: int) -> None:
        super().__init__()
        self.length = int(length)
        self.depth = int(depth)
        self.static = nn.ParameterList([nn.Parameter(torch.empty(self.length, channels)) for _ in range(self.depth)])
        for tokens in self.static:
            nn.init.normal_(tokens, std=0.02)
        self.generator = nn.ModuleList([nn.Linear(embed_dim, channels) for _ in range(self.length)])

    def dynamic(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)`` image embeddings → ``(B, length, channels)`` dynamic prompts."""
        return torch.stack([layer(embedding) for layer in self.generator], dim=1)

    def context(self, block: int, dynamic: torch.Tensor) -> torch.Tensor:
        """The hybrid prompt of ``block``: its static tokens plus the dynamic ones, ``(B, length, channels)``."""
        return self.static[block] + dynamic


# --------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """All learned AdaCLIP parameters of a file under our key names, and what the file is.

    Our names: ``visual.*`` (this extra's ``HybridPrompts``), ``text.*``, ``patch.<i>.*`` and
    ``image.*`` (the method's). The official file (``AdaCLIP_Trainer.save``) has the keys of
    ``OFFICIAL_KEYS`` under ``clip_model.``; a bare AdaCLIP state dict without that prefix is
    accepted too. Anything else is a ``WeightsError`` naming the file.
    """
    obj = load_checkpoint(path, "AdaCLIP", "checkpoint")
    try:
        ours = is_bench_checkpoint(obj, FORMAT, FORMAT_VERSION)
    except ValueError as exc:
        raise WeightsError(f"AdaCLIP checkpoint {path}: {exc}") from None
    if ours:
        return dict(obj["state_dict"]), {"kind": "bench", "layers": list(obj.get("layers", [])),
                                         "meta": dict(obj.get("meta", {}))}
    state: dict[str, torch.Tensor] = {}
    for key, value in (obj.items() if isinstance(obj, dict) else ()):
        name = str(key).removeprefix(OFFICIAL_PREFIX)
        prefix = next((p for p in OFFICIAL_KEYS if name.startswith(p)), None)
        if prefix is None or not isinstance(value, torch.Tensor):
            state = {}
            break
        state[OFFICIAL_KEYS[prefix] + name[len(prefix):]] = value
    if not state:
        found = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(
            f"AdaCLIP checkpoint {path}: not an AdaCLIP checkpoint (expected the official trainer's state dict "
            f"with keys clip_model.{{{', '.join(p.rstrip('.') for p in OFFICIAL_KEYS)}}}.* or a file saved by "
            f"bench's train_prompts; found {found})"
        )
    return state, {"kind": "official"}


def load_part(module: nn.Module, part: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``part`` (keys relative to ``module``) strictly; a mismatch is a ``WeightsError`` naming ``path``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(part))
    unexpected = sorted(set(part) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"AdaCLIP checkpoint {path}: its {what} do not fit this setting (missing {missing[:4] or 'none'}, "
            f"unexpected {unexpected[:4] or 'none'}): it was made for another prompt length, prompting depth or "
            f"number of layers (official: length {OFFICIAL_LENGTH}, depth {OFFICIAL_DEPTH}, 4 layers)"
        )
    for key, value in part.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"AdaCLIP checkpoint {path}: {what} {key} has shape {tuple(value.shape)}, this backbone needs "
                f"{tuple(expected[key].shape)}; the checkpoint was made for another backbone"
            )
    module.load_state_dict({key: value.float() for key, value in part.items()})


def parameters_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters (names and float32 values): identity of prompts trained in-process."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the extra


@CLIP_EXTRAS.register(NAME, "AdaCLIP's prompted visual forward (hybrid static + dynamic prompt tokens)")
class AdaCLIPPrompts(ClipExtra):
    """AdaCLIP's prompted visual forward on an ``OpenClipBackbone`` (see the module docstring).

    checkpoint: the method's learned parameters (official or bench file), ``"untrained"``, or
    None (untrained, allowed only with random backbone weights). length, depth: prompt length and
    prompting depth (official 5, 4). init_seed: seed of the untrained initialisation.
    """

    def __init__(
        self,
        backbone: OpenClipBackbone,
        checkpoint: str | None = None,
        length: int = OFFICIAL_LENGTH,
        depth: int = OFFICIAL_DEPTH,
        init_seed: int = 0,
    ) -> None:
        visual = backbone.model.visual
        blocks = len(visual.transformer.resblocks)
        if int(length) < 1:
            raise ConfigError(f"{NAME} length must be >= 1, got {length}")
        if not 1 <= int(depth) <= blocks:
            raise ConfigError(f"{NAME} depth must be in 1..{blocks} (the ViT's blocks), got {depth}")
        if not getattr(visual.transformer, "batch_first", True):
            raise ConfigError(f"{NAME} needs open_clip's batch-first transformer (open_clip >= 2.24)")
        self.backbone = backbone
        self.length = int(length)
        self.depth = int(depth)
        self.layers = tuple(backbone.layers)
        self._taps = {parse_layer(name, blocks): name for name in self.layers}  # 0-based block → layer
        embed_dim = int(visual.output_dim)
        # in the order forward produces them (blocks by depth), as the feature cache checks
        self.channels = {f"adaclip_{self._taps[block]}": int(backbone.width) for block in sorted(self._taps)}
        self.channels.update(adaclip_image=embed_dim, adaclip_clip_image=embed_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed))
            self.prompts = HybridPrompts(int(backbone.width), embed_dim, self.length, self.depth)
        self.checkpoint = learned_source(checkpoint, backbone, "adaclip", "checkpoint", CHECKPOINT_HELP)
        if self.checkpoint is None:
            self.source: dict[str, object] = {"untrained": int(init_seed)}
        else:
            state, _ = read_checkpoint(self.checkpoint)
            visual_part = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
            load_part(self.prompts, visual_part, self.checkpoint, "visual prompts")
            self.source = {"checkpoint_sha256": file_digest(self.checkpoint)}
        self.prompts.to(backbone.device).eval().requires_grad_(False)

    def identity(self) -> dict[str, object]:
        return {"layers": list(self.layers), "length": self.length, "depth": self.depth, "parameters": self.source}

    def compute(self, x: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward``, which the backbone runs under its inference mode and autocast."""
        return self.forward(x, embedding)

    def forward(self, x: torch.Tensor, clip_image: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Preprocessed ``(B, 3, S, S)`` batch → the prompted layers (with autograd to the prompts).

        ``clip_image``: the frozen, unprompted CLIP embedding of ``x`` (the input of the dynamic
        prompts), when the caller has it (the backbone's own pass); None computes it.
        """
        visual = self.backbone.model.visual
        if clip_image is None:
            with torch.no_grad():
                clip_image = visual(x)
        dynamic = self.prompts.dynamic(clip_image)
        h = visual._embeds(x)  # class + patch tokens after ln_pre (open_clip's own embedding step)
        n = h.shape[1]
        side = self.backbone.grid
        out: dict[str, torch.Tensor] = {}
        for block, layer in enumerate(visual.transformer.resblocks):
            if block < self.depth:  # append (block 0) or replace (blocks 1..J-1) the prompt tokens
                h = torch.cat([h[:, :n], self.prompts.context(block, dynamic).to(h.dtype)], dim=1)
            h = layer(h)
            if block in self._taps:
                tokens = h[:, 1:n]
                out[f"adaclip_{self._taps[block]}"] = tokens.reshape(len(x), side, side, -1).permute(0, 3, 1, 2)
        pooled, _ = visual._pool(h)
        image = pooled @ visual.proj if visual.proj is not None else pooled
        out["adaclip_image"] = image[:, :, None, None]
        out["adaclip_clip_image"] = clip_image[:, :, None, None]
        return out
