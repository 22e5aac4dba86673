"""WinCLIP zero-shot: CLIP text prompts against the embeddings of sliding windows of patches.

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023,
arXiv 2303.14814. The authors' code is not public; the settings and formulas follow the
reference implementation the field uses, anomalib's ``models/image/winclip`` (``torch_model.py``,
``prompting.py``, ``utils.py``; this is our own code). Per-image, training-free.

Pipeline (anomalib's names in brackets):

1. Backbone: open_clip ``ViT-B-16-plus-240`` with the ``laion400m_e31`` weights [``BACKBONE``,
   ``PRETRAINED``] at 240 px (a 15×15 grid of 16 px patches), CLIP mean/std, bicubic resize.
2. Text, per object name (the category name as is, e.g. ``metal_nut``): 7 normal states × 21
   templates and 4 abnormal states × 21 templates [``create_prompt_ensemble``]; each class is
   the mean of its raw (unnormalised) sentence embeddings [``_collect_text_embeddings``],
   normalised here once for the cosine; the two classes form ``T`` ``(D, 2)`` (normal, abnormal).
3. Window embeddings at scales 2 and 3 [``scales``]: every 2×2 and 3×3 window of patches, stride
   1 (196 and 169 windows), embedded by the image tower run on the class token and the window's
   patch tokens alone (the backbone extra ``windows.WindowEmbeddings``), plus the image embedding.
4. Score of an embedding e: ``softmax(cos(e, T) / 0.07)[abnormal]`` [``class_scores`` with
   ``TEMPERATURE = 0.07``].
5. Map: per scale, each patch gets the harmonic mean of the scores of the windows covering it
   [``harmonic_aggregation``]; the maps of the scales and the image score (broadcast over the
   grid, the "full image" scale) are combined by their harmonic mean, ``(S + 1) / Σ 1/m``
   [``_compute_zero_shot_scores``]. Returned at patch-grid resolution; the protocol upsamples
   bilinearly as anomalib does.
6. Image score: the score of the image embedding (step 4) [``class_scores(image_embeddings)``].

Backbones: any open_clip ViT gets the window extra through ``backbone_options`` (window sizes in
patch units, so the windows cover other pixel sizes on other patch sizes or input sizes); the
official backbone also gets its weights tag and input size. ``--weights`` overrides the tag.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bench.backbones.openclip import ARCHS
from bench.errors import ConfigError
from bench.interfaces import Backbone, Method, MethodInfo
from bench.methods._clip.prompts import ObjectPrompts, ensemble_embeddings, ensemble_sentences, require_clip
from bench.methods.winclip.windows import WindowEmbeddings
from bench.records import FeatureSet, ScoreOutput
from bench.registry import METHODS

PAPER = "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation (Jeong et al., CVPR 2023)"
ARXIV = "2303.14814"

# prompting.py: states (object name in {}) and templates (state in {}), anomalib's lists as they
# are, including its repeated "a jpeg corrupted photo of the {}.".
NORMAL_STATES: tuple[str, ...] = (
    "{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES: tuple[str, ...] = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.",
    "a dark photo of a {}.", "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.", "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.",
    "a photo of the large {}.", "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.", "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
TEMPERATURE = 0.07  # torch_model.py: softmax(cos / 0.07)

OFFICIAL_BACKBONE = "ViT-B-16-plus-240"
OFFICIAL_WEIGHTS = "laion400m_e31"
OFFICIAL_INPUT_SIZE = 240
OFFICIAL_SCALES = (2, 3)

# Measured by tests/parity (the README parity table shows the same line).
PARITY = (
    "compared with anomalib 2.7.0 WinClipModel (open_clip 2.24.0); max |Δ| maps 2.7e-7; image scores 1.2e-7"
)
DEVIATIONS = (
    "Precision: the backbone runs under its own precision (fp16 autocast on CUDA by default, "
    "'precision' backbone option; anomalib: fp32); the scoring arithmetic is float32. "
    "Preprocessing: PIL bicubic resize of the uint8 image to 240x240 (anomalib: torchvision's "
    "antialiased bicubic resize of the float image), then the same CLIP mean/std. "
    "Maps are returned at patch-grid resolution for the protocol to upsample (bilinear, "
    "align_corners=False, as anomalib's F.interpolate, which applies no smoothing): 'none' is scored on "
    "anomalib's map (up to the protocol's per-category min-max rescale, monotone). Only zero-shot WinCLIP: the few-shot "
    "WinCLIP+ (reference association with normal images) is not implemented."
)


# --------------------------------------------------------------------------- text


def prompt_sentences(name: str) -> tuple[list[str], list[str]]:
    """The (normal, abnormal) sentences of object ``name``: states × templates, state-major."""
    return ensemble_sentences(name, NORMAL_STATES, TEMPLATES), ensemble_sentences(name, ABNORMAL_STATES, TEMPLATES)


def text_embeddings(encode: Callable[[list[str]], torch.Tensor], name: str) -> torch.Tensor:
    """``(D, 2)``: per class, the mean of the raw sentence embeddings (``encode`` must not normalise
    them), L2-normalised: its cosine with an image embedding is anomalib's."""
    return ensemble_embeddings(encode, prompt_sentences(name), normalize_sentences=False)


# --------------------------------------------------------------------------- the formulas


def abnormal_probability(embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(...,)`` scores of ``(..., D)`` embeddings against unit-column ``T`` ``(D, 2)``:
    ``softmax(cos(e, T) / 0.07)[abnormal]``."""
    logits = F.normalize(embeddings.float(), dim=-1) @ text / TEMPERATURE
    return logits.softmax(dim=-1)[..., 1]


def harmonic_coverage(scores: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, h', w')`` window scores → ``(B, h, w)``: per patch, the harmonic mean of the scores
    of the ``size``×``size`` windows (stride 1) covering it, ``h = h' + size - 1``."""
    kernel = scores.new_ones(1, 1, size, size)
    inverse = F.conv_transpose2d(scores.reciprocal()[:, None], kernel)  # Σ 1/s over covering windows
    count = F.conv_transpose2d(torch.ones_like(scores)[:, None], kernel)
    return (count / inverse)[:, 0]


def anomaly_maps(image_scores: torch.Tensor, window_scores: dict[int, torch.Tensor]) -> torch.Tensor:
    """Harmonic mean of the per-scale maps and the image score broadcast over the grid: ``(B, h, w)``.

    ``window_scores``: window size → ``(B, h', w')`` scores of its windows.
    """
    maps = [harmonic_coverage(scores, size) for size, scores in window_scores.items()]
    maps.append(image_scores[:, None, None].expand_as(maps[0]))
    return len(maps) / torch.stack(maps).reciprocal().sum(dim=0)


# --------------------------------------------------------------------------- the method


class WinCLIP(Method):
    """WinCLIP zero-shot (see the module docstring).

    object_name: the object name put in the prompts for every image (default: each batch's
    category name, as anomalib uses the dataset's category).
    scales: window sizes in patches (anomalib's ``scales``, default 2 and 3).
    """

    def __init__(self, object_name: str | None = None, scales: Sequence[int] = OFFICIAL_SCALES) -> None:
        self.prompts: ObjectPrompts[torch.Tensor] = ObjectPrompts("winclip", object_name)  # text embeddings
        scales = (scales,) if isinstance(scales, int) else tuple(scales)
        if not scales or len(set(scales)) != len(scales) or any(not isinstance(k, int) or k < 1 for k in scales):
            raise ConfigError(f"winclip scales must be distinct window sizes >= 1 (in patches), got {list(scales)}")
        self.scales = scales
        self._backbone: Backbone | None = None
        self._device = torch.device("cpu")
        self.info = MethodInfo(
            name="winclip",
            paper=PAPER,
            arxiv=ARXIV,
            default_backbone=OFFICIAL_BACKBONE,
            settings={
                "backbone": f"{OFFICIAL_BACKBONE}, weights {OFFICIAL_WEIGHTS} (open_clip tag), "
                            f"{OFFICIAL_INPUT_SIZE} px: a 15x15 patch grid",
                "prompts": f"{len(NORMAL_STATES)} normal + {len(ABNORMAL_STATES)} abnormal states x "
                           f"{len(TEMPLATES)} templates (anomalib's lists); per class the mean of the "
                           f"raw sentence embeddings (anomalib)",
                "object_name": self.prompts.object_name or "category name",
                "scales": list(self.scales),
                "window": "k x k patches, stride 1; CLIP embedding of the class token + the window's "
                          "patch tokens (masked after the position embedding), ln_post, proj",
                "temperature": TEMPERATURE,
                "window_score": "softmax(cos(window, text) / 0.07)[abnormal]",
                "map": "per scale the harmonic mean over the windows covering each patch; then the "
                       "harmonic mean of the scale maps and the image score",
                "image_score": "softmax(cos(image embedding, text) / 0.07)[abnormal]",
                "parity": PARITY,
            },
            deviations=DEVIATIONS,
            backbone_options={OFFICIAL_BACKBONE: self.backbone_options(OFFICIAL_BACKBONE)},
        )

    @property
    def window_layers(self) -> dict[int, str]:
        """Window size → the FeatureSet layer holding its window embeddings."""
        return {k: f"window{k}" for k in self.scales}

    def backbone_options(self, backbone: str) -> dict[str, object]:
        """The window extra for every open_clip ViT; the official weights and size for the official one."""
        if backbone not in ARCHS:
            return {}
        options: dict[str, object] = {"extras": {WindowEmbeddings: {"sizes": self.scales}}}
        if backbone == OFFICIAL_BACKBONE:
            options.update(weights=OFFICIAL_WEIGHTS, input_size=OFFICIAL_INPUT_SIZE)
        return options

    def bind(self, backbone: Backbone) -> None:
        """Check the backbone is CLIP with the window embeddings; reset the text cache."""
        require_clip(backbone, "winclip", f"{OFFICIAL_BACKBONE} with --weights {OFFICIAL_WEIGHTS}")
        missing = [layer for layer in self.window_layers.values() if layer not in backbone.extra_channels]
        if missing:
            name = getattr(backbone, "name", type(backbone).__name__)
            raise ConfigError(
                f"winclip needs the window embeddings {', '.join(missing)} (the open_clip backbone's "
                f"{WindowEmbeddings.name!r} extra, sizes {list(self.scales)}), which backbone {name!r} does not give: "
                f"create it with winclip.backbone_options(name), as bench run does"
            )
        self._backbone = backbone
        self._device = torch.device(getattr(backbone, "device", "cpu"))
        self.prompts.cache.clear()

    def text(self, name: str) -> torch.Tensor:
        """``(D, 2)`` normal/abnormal text embeddings of object ``name`` (computed once, cached)."""
        if self._backbone is None:
            raise ConfigError("winclip: call bind(backbone) before scoring (the Runner does it)")
        encode = functools.partial(self._backbone.encode_text, normalize=False)
        return self.prompts.get(name, lambda n: text_embeddings(encode, n).to(self._device))

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        """Maps and image scores of each image (``reference`` is ignored: per-image method)."""
        text = self.text(self.prompts.object_for(features.category))
        missing = [layer for layer in self.window_layers.values() if layer not in features.layers]
        if missing:
            raise ConfigError(
                f"winclip: the features lack the window embeddings {', '.join(missing)} "
                f"(features have {', '.join(features.layers) or 'none'})"
            )
        with torch.no_grad():
            image = abnormal_probability(features.embedding.to(self._device), text)
            windows = {
                k: abnormal_probability(features.layers[layer].to(self._device).movedim(1, -1), text)
                for k, layer in self.window_layers.items()
            }
            maps = anomaly_maps(image, windows)
        return ScoreOutput(image_scores=image.cpu(), maps=maps.cpu())


@METHODS.register(
    "winclip",
    "WinCLIP (CVPR 2023) zero-shot: compositional prompt ensemble vs CLIP embeddings of sliding "
    "windows (2x2, 3x3 patches) and the image, harmonic aggregation",
)
def create(object_name: str | None = None, scales: Sequence[int] = OFFICIAL_SCALES) -> WinCLIP:
    """WinCLIP zero-shot.

    object_name: object name in the prompts (default: the category name).
    scales: window sizes in patches (default 2, 3 as anomalib). Official backbone:
    ViT-B-16-plus-240 with --weights laion400m_e31 (its default in this method).
    """
    return WinCLIP(object_name=object_name, scales=scales)
