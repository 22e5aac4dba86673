"""MuSc's scoring (the package docstring): LNAMD patch aggregation, mutual scoring (MSM) in memory-bounded
distance blocks, and RsCIN image re-scoring. Functions of tensors; the Method is in ``__init__``."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bench.errors import ConfigError

# Distance blocks of about this many elements (float32: 4 MiB) when chunk is automatic: blocks
# that stay in cache measured fastest here (16x16 grid: 4 images per chunk; 37x37: 1).
AUTO_BLOCK_ELEMENTS = 1 << 20
# Mutual mode keeps all per-image minima (B, P, B) when they fit this many elements (float32:
# 256 MiB), so that each distance block serves both directions (half the matmuls).
SYMMETRIC_MINIMA_ELEMENTS = 1 << 26


# --------------------------------------------------------------------------- LNAMD


def check_r(r: int) -> int:
    """An LNAMD aggregation degree ``r``: an odd positive integer, else a ConfigError."""
    if int(r) != r or r < 1 or r % 2 == 0:
        raise ConfigError(f"MuSc aggregation degrees must be odd positive integers, got r={r!r}")
    return int(r)


LAYERNORM_MODES = ("image", "token")


def layer_norm_map(x: torch.Tensor, mode: str = "image") -> torch.Tensor:
    """LayerNorm without affine (eps 1e-5) of a ``(B, C, h, w)`` patch map.

    ``"image"``: over ``(C, h, w)`` of each image, as the official LNAMD does
    (``torch.nn.LayerNorm([C, H, W])``). ``"token"``: over the C channels of each patch token
    (the usual transformer LayerNorm; not the official behaviour, offered as an option).
    """
    if mode == "image":
        return F.layer_norm(x, x.shape[1:], eps=1e-5)
    if mode == "token":
        return F.layer_norm(x.movedim(1, -1), x.shape[1:2], eps=1e-5).movedim(-1, 1)
    raise ConfigError(f"MuSc layernorm must be one of {LAYERNORM_MODES}, got {mode!r}")


def aggregate(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of each channel over the r×r neighbourhood, zero padding counted (official LNAMD)."""
    r = check_r(r)
    if r == 1:
        return x
    return F.avg_pool2d(x, kernel_size=r, stride=1, padding=(r - 1) // 2, count_include_pad=True)


def lnamd(x: torch.Tensor, r: int, grid: tuple[int, int], layernorm: str = "image") -> torch.Tensor:
    """One layer's patch map ``(B, C, h, w)`` → aggregated unit tokens ``(B, gh·gw, C)``."""
    x = aggregate(layer_norm_map(x.float(), layernorm), r)
    if tuple(x.shape[-2:]) != tuple(grid):
        x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    tokens = x.flatten(2).transpose(1, 2)  # (B, P, C)
    return F.normalize(tokens, dim=-1)


# --------------------------------------------------------------------------- MSM


def interval_count(n_ref: int, interval: float) -> int:
    """How many of the smallest per-image minima are averaged: ``int(n_ref · interval)``, ≥ 1."""
    return max(1, int(n_ref * interval))


def min_images_for(interval: float) -> int:
    """Smallest set that mutual scoring handles: the official ``int((N - 1) · interval)`` ≥ 1."""
    n = 2
    while int((n - 1) * interval) < 1:
        n += 1
    return n


def auto_chunk(patches_query: int, patches_ref: int) -> int:
    """Images per chunk so that one distance block has about ``AUTO_BLOCK_ELEMENTS`` entries."""
    return max(1, int(math.sqrt(AUTO_BLOCK_ELEMENTS / max(1, patches_query * patches_ref))))


def _augment(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left, right)`` with ``left_a · right_b = ||a - b||²``: ``[a, ||a||², 1]·[-2b, 1, ||b||²]``.

    One matmul then gives squared distances directly (the expansion torch.cdist uses for large
    inputs), with no broadcast additions over the block.
    """
    sq = x.pow(2).sum(-1, keepdim=True)
    one = torch.ones_like(sq)
    return torch.cat([x, sq, one], dim=-1), torch.cat([-2.0 * x, one, sq], dim=-1)


def _interval_mean(minima_sq: torch.Tensor, k: int) -> torch.Tensor:
    """``(b, P, n)`` squared minima → mean of the k smallest distances over the last axis."""
    smallest = minima_sq.topk(k, dim=-1, largest=False, sorted=False).values
    return smallest.clamp_min(0).sqrt().mean(dim=-1)


def mutual_scores(
    tokens_query: torch.Tensor,
    tokens_ref: torch.Tensor,
    interval: float = 0.3,
    exclude_self: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """MSM scoring core: ``(Bq, P, C)`` queries against ``(Br, Q, C)`` references → ``(Bq, P)``.

    ``d_ij(p) = min_q ||query_i(p) - ref_j(q)||``; the score of ``(i, p)`` is the mean of the
    ``interval_count(n_ref, interval)`` smallest ``d_ij(p)`` over reference images j.
    ``exclude_self``: queries and references are the same set (pass the same tensor), and image
    i is not its own reference (mutual mode; n_ref = B - 1).
    ``chunk``: images per block on both sides (None: automatic). Peak memory is one
    ``(chunk·P, chunk·Q)`` distance block plus the per-reference-image minima: ``(B, P, B)`` in
    mutual mode when that fits ``SYMMETRIC_MINIMA_ELEMENTS`` (then each block serves both
    directions, half the work), else ``(chunk, P, Br)`` for one query chunk at a time. The full
    set of distances is never held; results do not depend on ``chunk`` (up to float rounding).
    """
    if (
        tokens_query.ndim != 3
        or tokens_ref.ndim != 3
        or tokens_query.shape[-1] != tokens_ref.shape[-1]
    ):
        raise ConfigError(
            f"tokens must be (B, P, C) with the same C, got {tuple(tokens_query.shape)} and "
            f"{tuple(tokens_ref.shape)}"
        )
    if not 0 < interval <= 1:
        raise ConfigError(f"interval must be in (0, 1], got {interval}")
    bq, p, _ = tokens_query.shape
    br, q, _ = tokens_ref.shape
    if exclude_self and tokens_query.shape != tokens_ref.shape:
        raise ConfigError("exclude_self needs the queries and the references to be the same set")
    n_ref = br - 1 if exclude_self else br
    if n_ref < 1:
        raise ConfigError(f"MuSc needs at least one reference image per query (got {n_ref})")
    k = interval_count(n_ref, interval)
    chunk = auto_chunk(p, q) if chunk is None else max(1, int(chunk))

    left, _ = _augment(tokens_query)
    _, right = _augment(tokens_ref)
    left = left.reshape(bq * p, -1)
    right = right.reshape(br * q, -1)

    if exclude_self and bq * p * br <= SYMMETRIC_MINIMA_ELEMENTS:
        # Symmetric path: block (a, b) gives min over b's patches for a's queries (row minima) and
        # min over a's patches for b's queries (column minima), so only b >= a is computed.
        minima = tokens_query.new_empty(bq, p, br)
        for a in range(0, bq, chunk):
            ca = min(chunk, bq - a)
            rows = left[a * p : (a + ca) * p]
            for b in range(a, br, chunk):
                cb = min(chunk, br - b)
                d2 = (rows @ right[b * q : (b + cb) * q].T).view(ca, p, cb, q)
                minima[a : a + ca, :, b : b + cb] = d2.amin(dim=3)
                if b != a:
                    minima[b : b + cb, :, a : a + ca] = d2.amin(dim=1).permute(1, 2, 0)
        own = torch.arange(bq, device=minima.device)
        minima[own, :, own] = float("inf")
        out = tokens_query.new_empty(bq, p)
        for a in range(0, bq, chunk):
            out[a : a + chunk] = _interval_mean(minima[a : a + chunk], k)
        return out

    out = tokens_query.new_empty(bq, p)
    for a in range(0, bq, chunk):
        ca = min(chunk, bq - a)
        rows = left[a * p : (a + ca) * p]
        minima = tokens_query.new_empty(ca, p, br)  # squared distance to the nearest patch of j
        for b in range(0, br, chunk):
            cb = min(chunk, br - b)
            d2 = (rows @ right[b * q : (b + cb) * q].T).view(ca, p, cb, q)
            minima[:, :, b : b + cb] = d2.amin(dim=3)
        if exclude_self:
            own = torch.arange(ca, device=minima.device)
            minima[own, :, a + own] = float("inf")
        out[a : a + ca] = _interval_mean(minima, k)
    return out


# --------------------------------------------------------------------------- RsCIN


def rscin(
    scores: torch.Tensor, embeddings: torch.Tensor, k_list: Sequence[int] = (1, 2, 3)
) -> torch.Tensor:
    """Re-score images by kNN smoothing over their embeddings (RsCIN's MMO step).

    ``W = Ê Êᵀ`` (cosine similarities); for each k zero the n - k smallest entries of each row
    as the official code (``topk(n - k, largest=False)``: with ties its choice, not ``topk(k)``'s,
    decides which neighbours stay), ``P_k = D⁻¹ W_k`` row-normalised, ``s_k = P_k s``; returns the
    mean of the ``s_k``. k = 0 anywhere in ``k_list`` disables it (official convention).
    """
    if not k_list or 0 in k_list:
        return scores
    n = scores.shape[0]
    e = F.normalize(embeddings.float(), dim=-1)
    w = e @ e.T
    s = scores.float()
    out = torch.zeros_like(s)
    for k in k_list:
        drop = n - min(int(k), n)  # official: zero the n - k smallest of each row (its tie order)
        index = w.topk(drop, dim=1, largest=False, sorted=True).indices
        mask = w.scatter(1, index, 0.0)
        prob = mask / mask.sum(dim=1, keepdim=True)
        out += prob @ s
    return (out / len(k_list)).to(scores.dtype)
