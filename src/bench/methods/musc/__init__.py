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

Layout: ``model.py`` (LNAMD, mutual scoring, RsCIN: functions of tensors); the method below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.interfaces import Backbone, Method, MethodInfo
from bench.methods.musc.model import LAYERNORM_MODES, check_r, lnamd, min_images_for, mutual_scores, rscin
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = (
    "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of "
    "the Unlabeled Images (Li et al., ICLR 2024)"
)
ARXIV = "2401.16753"

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
        self.r_list = tuple(check_r(r) for r in r_list)
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
