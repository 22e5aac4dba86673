"""AdaCLIP's prompted visual forward: hybrid (static + dynamic) learnable prompt tokens in the ViT.

Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024, arXiv 2407.15795; official code caoyunkang/AdaCLIP (``method/adaclip.py``:
``PromptLayer.forward_visual``, ``AdaCLIP.encode_image``, ``generate_and_set_dynamic_promtps``;
read for the facts, this is our own code). The method itself is ``bench.methods.adaclip``; this is
its backbone extra, computed in the open_clip backbone's pass and cached with its features.

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

Learned parameters come from the ``checkpoint`` option (``bench.methods._learned.learned_source``:
a file, ``"untrained"``, or None = untrained on a random-weights backbone). The file is read once,
here (``checkpoint.read_checkpoint``: the official trainer's file or bench's own); the extra keeps
the whole state (``state``) and the method loads its own parts from it when it binds.
The cache identity carries the sha256 of the file (or the untrained seed, or a digest of
parameters trained in this process), so features of different checkpoints never mix.
"""
from __future__ import annotations

import torch

from bench.backbones.openclip import OpenClipBackbone, parse_layer
from bench.cache import file_digest
from bench.errors import ConfigError
from bench.interfaces import BackboneExtra
from bench.methods._learned import learned_source
from bench.methods.adaclip.checkpoint import CHECKPOINT_HELP, load_part, read_checkpoint
from bench.methods.adaclip.model import OFFICIAL_DEPTH, OFFICIAL_LENGTH, HybridPrompts

NAME = "adaclip_prompts"


class AdaCLIPPrompts(BackboneExtra):
    """AdaCLIP's prompted visual forward on an ``OpenClipBackbone`` (see the module docstring).

    checkpoint: the method's learned parameters (official or bench file), ``"untrained"``, or
    None (untrained, allowed only with random backbone weights). length, depth: prompt length and
    prompting depth (official 5, 4). init_seed: seed of the untrained initialisation.
    """

    name = NAME

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
        # the file, read once: the method takes its own parts from ``state`` / ``file_info`` when it binds
        self.state: dict[str, torch.Tensor] = {}
        self.file_info: dict[str, object] = {}
        if self.checkpoint is None:
            self.source: dict[str, object] = {"untrained": int(init_seed)}
        else:
            self.state, self.file_info = read_checkpoint(self.checkpoint)
            visual_part = {k.removeprefix("visual."): v for k, v in self.state.items() if k.startswith("visual.")}
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
