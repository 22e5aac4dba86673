"""What the parity fixtures are made from: a tiny CLIP config, seeded weights, seeded images.

Imported by the fixture scripts (which run the official code from its checkout) and by the tests
(which run bench), so both sides see the same weights and pixels without storing either. The
weights follow from each tensor's name and shape only, so two implementations with the same
state-dict keys get the same values.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch

SEED = 14
ARCH = "parity-ViT-tiny"  # 24 blocks as ViT-L-14-336 (its layer indices apply); 64 wide, one head (OpenAI-style builds infer width // 64)
IMAGE_SIZE = 64  # patch 8: an 8x8 grid
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 24, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12},
}


ARCH_D64 = "parity-ViT-tiny-d64"  # embed_dim = text width, as ViT-L-14-336 (768): VCP-CLIP asserts it
CONFIG_D64 = {**CONFIG, "embed_dim": 64}


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded weights for ``{name: shape}``: LayerNorm scales near 1, matrices scaled by 1/sqrt(fan-in)."""
    out = {}
    for name, shape in shapes.items():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        x = torch.randn(shape, generator=gen)
        if len(shape) == 0:
            x = torch.tensor(math.log(1 / 0.07))  # logit_scale
        elif len(shape) == 1:
            is_norm_scale = name.endswith(".weight") and ("ln" in name.split(".")[-2] or "norm" in name)
            x = 1 + 0.1 * x if is_norm_scale else 0.1 * x
        else:
            x = x / math.sqrt(math.prod(shape[1:]))
        out[name] = x
    return out


def linear_adapters(count: int, seed: int = SEED + 1) -> dict[str, torch.Tensor]:
    """Seeded per-layer linear adapters width → embed_dim, in the official key names ``fc.<i>.weight|bias``
    (APRIL-GAN's ``LinearLayer``)."""
    width, dim = CONFIG["vision_cfg"]["width"], CONFIG["embed_dim"]
    shapes = {}
    for i in range(count):
        shapes[f"fc.{i}.weight"], shapes[f"fc.{i}.bias"] = (dim, width), (dim,)
    return random_state_dict(shapes, seed=seed)


def anomalyclip_prompts(n_ctx: int = 12, depth: int = 9, t_n_ctx: int = 4, seed: int = SEED + 2) -> dict[str, torch.Tensor]:
    """Seeded learnable prompts in AnomalyCLIP's key names (``ctx_pos``, ``ctx_neg``, ``compound_prompts_text.<i>``)."""
    width = CONFIG["text_cfg"]["width"]
    shapes = {"ctx_pos": (1, 1, n_ctx, width), "ctx_neg": (1, 1, n_ctx, width)}
    shapes.update({f"compound_prompts_text.{i}": (t_n_ctx, width) for i in range(depth - 1)})
    return random_state_dict(shapes, seed=seed)


def vcpclip_checkpoint(layers: int = 4, r: int = 2, text_layers: int = 12, seed: int = SEED + 3) -> dict:
    """Seeded VCP-CLIP parameters in the official checkpoint's layout (``trainable_linearlayer``,
    ``New_Lan_Embed``, ``Zero_try`` and the CLIP ``prompt*`` entries at the top level) for ``CONFIG_D64``."""
    w, t, d = CONFIG_D64["vision_cfg"]["width"], CONFIG_D64["text_cfg"]["width"], CONFIG_D64["embed_dim"]
    shapes = {f"trainable_linearlayer/fc.{i}.{k}": s for i in range(layers) for k, s in (("weight", (d, w)), ("bias", (d,)))}
    shapes.update({"New_Lan_Embed/prompt_query": (1, r, t), "New_Lan_Embed/prompt_linear1.fc.weight": (r, 1, 3),
                   "New_Lan_Embed/prompt_linear1.fc.bias": (r,), "New_Lan_Embed/prompt_temp": (), "Zero_try/prompt_temp_l1": ()})
    for name, fan_in in (("q_proj_pre", t), ("k_proj_pre_1", w), ("v_proj_pre_1", w), ("proj_post_t", w)):
        shapes[f"Zero_try/{name}.weight"], shapes[f"Zero_try/{name}.bias"] = (w, fan_in, 1), (w,)
    shapes.update({"prompt_embeddings": (1, 1, t), "deep_prompt_embeddings": (text_layers - 1, 1, t),
                   "prompt_proj.weight": (t, t), "prompt_proj.bias": (t,), "prompt_norm.weight": (t,),
                   "prompt_norm.bias": (t,), "prompt_text_projection": (t, d)})
    out: dict = {}
    for key, value in random_state_dict(shapes, seed=seed).items():
        part, _, name = key.rpartition("/")
        (out.setdefault(part, {}) if part else out)[name] = value
    return out


def adaclip_checkpoint(length: int = 5, depth: int = 4, layers: int = 4, seed: int = SEED + 4) -> dict[str, torch.Tensor]:
    """Seeded AdaCLIP parameters in the official trainer's key names (``clip_model.<part>.*``) for ``CONFIG_D64``."""
    w, e = CONFIG_D64["vision_cfg"]["width"], CONFIG_D64["embed_dim"]
    shapes = {f"{branch}_prompter.static_prompts.{j}": (length, width)
              for branch, width in (("visual", w), ("text", e)) for j in range(depth)}
    heads = [("patch_token_layer", layers, e, w), ("cls_token_layer", 1, e, e),
             ("dynamic_visual_prompt_generator", length, w, e), ("dynamic_text_prompt_generator", length, e, e)]
    for part, count, out, fan_in in heads:
        for i in range(count):
            shapes[f"{part}.head.{i}.weight"], shapes[f"{part}.head.{i}.bias"] = (out, fan_in), (out,)
    return {f"clip_model.{k}": v for k, v in random_state_dict(shapes, seed=seed).items()}


def half_rounded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` rounded to fp16 (the values of OpenAI's fp16 archives, which VCP-CLIP's and AdaCLIP's builds
    round their weights to), in float32."""
    return {k: v.half().float() for k, v in state.items()}


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a model's state dict (its persistent floating-point tensors)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}


def images(n: int = 6, size: int = IMAGE_SIZE, seed: int = SEED) -> list[np.ndarray]:
    """``n`` smooth random textures (H×W×3 uint8); images 1 and 4 carry a bright square defect."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 190, size=(4, 4, 3))
    out = []
    for i in range(n):
        coarse = base + rng.normal(0, 12, size=base.shape)
        img = np.kron(coarse, np.ones((size // 4, size // 4, 1))) + rng.normal(0, 6, size=(size, size, 3))
        if i in (1, 4):
            y, x = rng.integers(4, size - 20, size=2)
            img[y : y + 14, x : x + 14] = 250
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out
