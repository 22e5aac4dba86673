"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring of unlabeled images.

Li et al., ICLR 2024, arXiv 2401.16753; official code xrli-U/MuSc (read for the formulas and
settings; this is our own code). Training-free and inter-image: every patch of an image is compared
with the patches of the *other* images of the set; normal patches find close matches in many
images, anomalous ones in few.

Pipeline (official code in brackets):

1. LNAMD, per layer and per aggregation degree r (``models/modules/_LNAMD.py``):
   - LayerNorm without affine over ``(C, h, w)`` of each image's patch map [``torch.nn.LayerNorm(
     [C, H, W])`` built on the fly, so weight 1 / bias 0, eps 1e-5]; ``layernorm="token"``
     normalises each token over its channels instead (an option, not the official behaviour);
   - r×r neighbourhood aggregation: unfold r×r with zero padding (r-1)/2, stride 1, then
     ``adaptive_avg_pool1d`` of the flattened ``C·r·r`` vector to C values [``MeanMapper`` with
     ``feature_dim`` = C]. The flattened order is channel-major, so the pool averages each channel
     over its r×r window, zero padding included: exactly ``avg_pool2d(r, stride 1, padding
     (r-1)/2, count_include_pad=True)``, which is what we compute. r = 1 leaves the tokens as
     they are;
   - resize every layer to the common grid, bilinear with ``align_corners=False`` [official:
     to the first layer's patch grid, all ViT layers having the same size], then L2-normalise
     each token [``features /= features.norm(dim=-1)`` after the resize].
2. MSM, per layer and r (``models/modules/_MSM.py``): for query image i, patch p and reference
   image j, ``d_ij(p) = min_q ||z_i(p) - z_j(q)||``; the patch score is the mean of the
   ``k = int(n_ref · interval)`` smallest of ``{d_ij(p)}_j`` [``topmin_min=0, topmin_max=0.3``].
   In mutual mode j runs over the other images of the batch (n_ref = B - 1); in reference mode
   over all reference images (there k = max(1, ...), so one reference image works).
3. Maps: mean over layers, then over r [``anomaly_maps_l.mean(0)``, ``anomaly_maps_r.mean(0)``],
   returned at grid resolution; the protocol upsamples them bilinearly with ``align_corners=True``
   to the input size, as the official code [``F.interpolate(..., size=img_size, mode='bilinear',
   align_corners=True)``] (``MethodInfo.align_corners``), which evaluates that map unsmoothed: it is
   what ``none`` is scored on (no ``ScoreOutput.evaluated`` needed).
4. Image score: the max of that upsampled map [``anomaly_maps.reshape(B, -1).max(-1)``; with
   ``align_corners=True`` only the four corner cells land on a pixel, so it is not the grid max],
   then RsCIN (``models/modules/_RsCIN.py``): W = E Eᵀ of the L2-normalised global embeddings;
   for each k in ``rscin_k`` zero the n - k smallest entries of each row [``topk(n - k,
   largest=False)``, so ties are broken as torch.topk does there], row-normalise, and smooth
   ``s_k = P_k s``; the score is the mean over k [k = (1, 2, 3) for MVTec AD and other sets,
   (1, 8, 9) for VisA].

Memory: distances are computed block by block (``chunk`` query images × ``chunk`` reference
images) and reduced at once to per-reference-image minima; the full set of distances is never
held. Mutual mode keeps all minima ``(B, P, B)`` while they fit ``SYMMETRIC_MINIMA_ELEMENTS`` (each
block then serves both directions); beyond that, and in reference mode, only those of one query
chunk, ``(chunk, P, n_ref)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.interfaces import Backbone, Method, MethodInfo
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = (
    "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of "
    "the Unlabeled Images (Li et al., ICLR 2024)"
)
ARXIV = "2401.16753"

# Distance blocks of about this many elements (float32: 4 MiB) when chunk is automatic: blocks
# that stay in cache measured fastest here (16x16 grid: 4 images per chunk; 37x37: 1).
AUTO_BLOCK_ELEMENTS = 1 << 20
# Mutual mode keeps all per-image minima (B, P, B) when they fit this many elements (float32:
# 256 MiB), so that each distance block serves both directions (half the matmuls).
SYMMETRIC_MINIMA_ELEMENTS = 1 << 26

# The official setting (configs/musc.yaml: ViT-L-14-336, openai, img_resize 518,
# feature_layers [5, 11, 17, 23] 0-based = blocks 6/12/18/24 in bench's 1-based naming). At
# 518 px the official factory builds the model from its config, ``CLIP(**model_cfg)``, which has no
# ``quick_gelu``, and loads OpenAI's weights into it: the towers run exact GELU, so the published
# numbers come from GELU features. Other backbones are used with their own defaults (open_clip
# ViTs: 4 evenly spaced blocks, native size).
OFFICIAL_BACKBONE = "ViT-L-14-336"
BACKBONE_OPTIONS: dict[str, dict[str, object]] = {
    OFFICIAL_BACKBONE: {
        "layers": ("block6", "block12", "block18", "block24"),
        "input_size": 518,
        "quick_gelu": False,
    },
}
IMAGE_SCORES = ("upsampled", "grid")
# Measured by tests/parity (the README parity table shows the same line).
PARITY = "compared with xrli-U/MuSc@b76b93da; max |Δ| maps 6.7e-7; image scores 1.6e-7"

DEVIATIONS = (
    "Backbone: the default is the offline CNN EfficientNet-Lite0 (blocks 4/7/10, 256 px, 16x16 "
    "grid), because CLIP weights need a download; the official setting is `--backbone "
    "ViT-L-14-336` (open_clip, 'openai' weights, or a local checkpoint via --weights), which the "
    "method asks for through backbone_options: 518 px (position embedding resized bicubically by "
    "open_clip), exact GELU as the official build (CLIP(**model_cfg), no quick_gelu, although "
    "OpenAI's weights were trained with QuickGELU), patch tokens of blocks 6/12/18/24 (before "
    "ln_post, class token dropped), 37x37 grid; on CUDA the backbone runs under fp16 autocast as the official code. On the CNN the "
    "layers have different channel counts and resolutions, so LNAMD runs per layer and each is "
    "resized to one grid (the official code resizes to the first layer's grid; all its ViT layers "
    "share it, as ours do on a ViT). Other open_clip ViTs run with 4 evenly spaced blocks at "
    "their native size (not an official setting). "
    "RsCIN: scores are not min-max normalised over the set before smoothing; since each smoothing "
    "row sums to 1 the result is an increasing affine map of the official one (same ranking and "
    "image metrics), stays on the map's scale, and is defined when all scores are equal. RsCIN "
    "uses the backbone's embedding: on CLIP the L2-normalised projected image embedding as the "
    "official code, on the CNN its pooled head (L2-normalised); k "
    "values larger than the batch are clipped to it; in reference mode the neighbours are the "
    "other images of the scored batch. "
    "Maps are returned on the grid (what refiners consume) and upsampled to the input size "
    "bilinearly with align_corners=True as the official code (align_corners=False, patch-centred, "
    "is an option); the image score is the max of that upsampled map as official (image_score="
    "'grid', the grid max, is an option). "
    "Interval mean: k = int(n_ref * interval) as in the official code; sets where that is 0 "
    "(official: NaN) are refused in mutual mode, and in reference mode k = max(1, ...). "
    "Distances are computed in float32 in blocks (official: fp16 autocast on GPU, one query image "
    "at a time against the whole set). The set is never split into sub-sets (official "
    "divide_num=1 default)."
)


# --------------------------------------------------------------------------- LNAMD


def _check_r(r: int) -> int:
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
    r = _check_r(r)
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


# --------------------------------------------------------------------------- the method


@METHODS.register(
    "musc",
    "MuSc (ICLR 2024): training-free mutual scoring of unlabeled images (LNAMD + MSM + RsCIN)",
)
class MuSc(Method):
    """Training-free inter-image scoring (LNAMD + MSM + RsCIN), with the official settings by default.

    r_list: LNAMD aggregation degrees (odd; official 1, 3, 5).
    interval: fraction of the per-reference-image minima averaged, smallest first (official 0.3).
    grid: side of the common scoring grid; None = the coarsest layer's size (16 for
    EfficientNet-Lite0 at 256 px).
    rscin: re-score image scores with RsCIN (official: on).
    rscin_k: RsCIN neighbourhood sizes (official (1, 2, 3) for MVTec AD, (1, 8, 9) for VisA).
    chunk: images per distance block on each side; None = automatic (about 2^20 distances per
    block: 4 images at a 16×16 grid, 1 at 37×37). Memory stays bounded by one block plus the
    per-image minima; results do not depend on it.
    layernorm: "image" = LayerNorm over (C, h, w) of each image, as the official code;
    "token" = over the channels of each patch token (an option, not the official behaviour).
    align_corners: how the grid map is upsampled to pixels (bilinear). True = official (grid point
    i on pixel i·(S-1)/(g-1)); False = patch-centred (no half-patch shift at the borders).
    image_score: "upsampled" = max of the map upsampled to ``image_size`` as official; "grid" =
    max of the grid map (cheaper; differs by up to a few 1e-3 and can reorder images).
    image_size: side the image score's map is upsampled to; None = the backbone's input size
    (set by ``bind``; without a bound backbone, the grid).
    """

    def __init__(
        self,
        r_list: Sequence[int] = (1, 3, 5),
        interval: float = 0.3,
        grid: int | None = None,
        rscin: bool = True,
        rscin_k: Sequence[int] = (1, 2, 3),
        chunk: int | None = None,
        layernorm: str = "image",
        align_corners: bool = True,
        image_score: str = "upsampled",
        image_size: int | None = None,
    ) -> None:
        if layernorm not in LAYERNORM_MODES:
            raise ConfigError(f"MuSc layernorm must be one of {LAYERNORM_MODES}, got {layernorm!r}")
        self.layernorm = layernorm
        self.r_list = tuple(_check_r(r) for r in r_list)
        if not self.r_list:
            raise ConfigError("MuSc needs at least one aggregation degree in r_list (e.g. 1,3,5)")
        if not 0 < float(interval) <= 1:
            raise ConfigError(f"MuSc interval must be in (0, 1] (official 0.3), got {interval}")
        self.interval = float(interval)
        if grid is not None and int(grid) < 1:
            raise ConfigError(f"MuSc grid must be a positive integer or None, got {grid}")
        self.grid = None if grid is None else int(grid)
        self.use_rscin = bool(rscin)
        self.rscin_k = tuple(int(k) for k in rscin_k)
        if any(k < 0 for k in self.rscin_k):
            raise ConfigError(f"rscin_k must be non-negative, got {self.rscin_k}")
        if chunk is not None and int(chunk) < 1:
            raise ConfigError(
                f"MuSc chunk must be a positive number of images or None, got {chunk}"
            )
        self.chunk = None if chunk is None else int(chunk)
        if image_score not in IMAGE_SCORES:
            raise ConfigError(f"MuSc image_score must be one of {IMAGE_SCORES}, got {image_score!r}")
        self.image_score = image_score
        if image_size is not None and int(image_size) < 1:
            raise ConfigError(f"MuSc image_size must be a positive integer or None, got {image_size}")
        self.image_size = None if image_size is None else int(image_size)
        self.align_corners = bool(align_corners)
        self.info = MethodInfo(
            name="musc",
            paper=PAPER,
            arxiv=ARXIV,
            default_backbone="efficientnet_lite0",
            needs_auxiliary_training=False,
            inter_image=True,
            min_images=min_images_for(self.interval),
            settings={
                "r_list": list(self.r_list),
                "interval": self.interval,
                "grid": self.grid if self.grid is not None else "coarsest layer",
                "layernorm": self.layernorm,  # "image": over (C, h, w), as official
                "aggregation": "r x r mean, zero padding counted (official unfold + adaptive pool)",
                "grid_resize": "bilinear, align_corners=False, then L2-normalise tokens",
                "layer_and_r_fusion": "mean over layers, then over r",
                "image_score": (
                    "max of the map upsampled to the input size" if image_score == "upsampled"
                    else "max of the grid map"
                ) + (", then RsCIN" if self.use_rscin else ""),
                "rscin": self.use_rscin,
                "rscin_k": list(self.rscin_k),
                "chunk": self.chunk if self.chunk is not None else "auto",
                "map_resolution": "grid (the protocol upsamples; the official evaluation is that upsampled map, "
                                  "unsmoothed: 'none' is scored on it)",
                "upsampling": f"bilinear, align_corners={self.align_corners}"
                + (" (official)" if self.align_corners else " (patch-centred; official: True)"),
                "rscin_ties": "zero the n-k smallest similarities per row (official)",
                "parity": PARITY,
                "activation": "exact GELU on ViT-L-14-336 (official build); the tag's elsewhere",
            },
            deviations=DEVIATIONS,
            backbone_options=BACKBONE_OPTIONS,
            align_corners=self.align_corners,
        )

    def bind(self, backbone: Backbone) -> None:
        """Take the input size the image score's map is upsampled to (unless ``image_size`` is set)."""
        if self.image_size is None:
            self.image_size = int(backbone.input_size)

    def _image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """Max of each map; upsampled to ``image_size`` first (official), a few images at a time."""
        if self.image_score == "grid" or self.image_size is None:
            return maps.flatten(1).amax(dim=1)
        out = maps.new_empty(maps.shape[0])
        for a in range(0, maps.shape[0], 16):
            up = F.interpolate(
                maps[a : a + 16, None], size=(self.image_size, self.image_size), mode="bilinear",
                align_corners=self.align_corners,
            )
            out[a : a + 16] = up.flatten(1).amax(dim=1)
        return out

    # -- helpers
    def _grid(self, features: FeatureSet) -> tuple[int, int]:
        if self.grid is not None:
            return (self.grid, self.grid)
        sizes = [tuple(v.shape[-2:]) for v in features.layers.values()]
        return min(sizes, key=lambda hw: (hw[0] * hw[1], hw))

    @staticmethod
    def _check_features(features: FeatureSet, what: str) -> None:
        if not features.layers:
            raise ConfigError(f"MuSc got {what} features without any layer")
        for name, value in features.layers.items():
            if value.ndim != 4:
                raise ConfigError(
                    f"MuSc expects (B, C, h, w) layers; {what} layer {name!r} is "
                    f"{tuple(value.shape)}"
                )

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Mutual scoring within the batch (``reference=None``) or against a reference set."""
        self._check_features(features, "query")
        n = len(features)
        if reference is None:
            if n < self.info.min_images:
                raise ConfigError(
                    f"MuSc mutual scoring needs at least {self.info.min_images} images with "
                    f"interval={self.interval} (each image is scored against the smallest "
                    f"int((N-1)*interval) of its N-1 neighbours; the official code returns NaN "
                    f"below that), got {n}. Score a larger set, or pass a reference set."
                )
        else:
            self._check_features(reference, "reference")
            if len(reference) < 1:
                raise ConfigError("MuSc reference mode needs at least 1 reference image, got 0")
            if list(reference.layers) != list(features.layers):
                raise ConfigError(
                    f"MuSc reference layers {list(reference.layers)} differ from the query layers "
                    f"{list(features.layers)}"
                )
            for name in features.layers:
                if reference.layers[name].shape[1] != features.layers[name].shape[1]:
                    raise ConfigError(
                        f"MuSc reference layer {name!r} has a different channel count"
                    )
        if n == 0:
            g = self._grid(features)
            return ScoreOutput(torch.zeros(0), torch.zeros(0, *g))

        grid = self._grid(features)
        total = None
        count = 0
        for r in self.r_list:
            for name, layer in features.layers.items():
                query = lnamd(layer, r, grid, self.layernorm)
                if reference is None:
                    s = mutual_scores(
                        query, query, self.interval, exclude_self=True, chunk=self.chunk
                    )
                else:
                    ref = lnamd(reference.layers[name].to(query.device), r, grid, self.layernorm)
                    s = mutual_scores(
                        query, ref, self.interval, exclude_self=False, chunk=self.chunk
                    )
                total = s if total is None else total + s
                count += 1
        # Every (layer, r) pair has the same weight, so mean over layers then over r = overall mean.
        maps = (total / count).view(n, *grid)
        image_scores = self._image_scores(maps)
        if self.use_rscin:
            image_scores = rscin(
                image_scores, features.embedding.to(image_scores.device), self.rscin_k
            )
        return ScoreOutput(image_scores=image_scores, maps=maps)
