"""Content-addressed on-disk cache of backbone features, one file per image (docs/design.md, "Feature cache and resume").

Key of an image = sha256 over: the bench cache version, the backbone's identity
(``Backbone.identity()``: name, class, layers, input size, precision, weights tag or ``random``,
and for a weights *file* the sha256 of its content instead of its path) and the image itself:
the exact uint8 pixels the backbone is given (already resized to its input size by the stream
builder, with its declared resampling), with their shape. Same pixels + same backbone = same
key, wherever the file lives and whatever it is called; any change of option gives a new key.

Files: ``<out>/cache/features/<key[:2]>/<key>.pt``, a ``torch.save`` of ``{"version", "layers":
{name: (C, h, w)}, "embedding": (D,), "sha256"}`` exactly as computed (float32), so a cached run
gives bit-identical features to an uncached one. ``sha256`` is the checksum of the tensors'
names, shapes, dtypes and bytes (``content_digest``), verified on every read: a file whose
tensors were altered (a flipped bit, a bad disk, an edit) is never used. Writes are atomic
(temporary file + rename), so concurrent runs and interrupted runs never leave half files; a file
that cannot be read, fails its checksum or does not match the backbone is recomputed with a
warning (and rewritten), never a crash. A file that cannot be written (full disk, read-only
folder: ``OSError``, or torch's ``RuntimeError``) is a warning too: the run goes on without it.

Cache invalidation is by key only: bump ``CACHE_VERSION`` when a change of code changes the
features of an unchanged backbone configuration. Delete ``<out>/cache`` to reclaim space.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from bench.interfaces import Backbone
from bench.records import FeatureSet

CACHE_VERSION = 2  # 2: files carry a content checksum
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256


def file_digest(path: Path) -> str:
    """sha256 of a file's content, memoised per (path, size, mtime) within the process."""
    path = Path(path).resolve()
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


def content_digest(layers: dict[str, torch.Tensor], embedding: torch.Tensor) -> str:
    """sha256 of the cached tensors: each one's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in [*layers.items(), ("<embedding>", embedding)]:
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_fingerprint(backbone: Backbone) -> dict[str, object]:
    """``backbone.identity()`` with a weights file replaced by the hash of its content."""
    ident = dict(backbone.identity())
    path = ident.pop("weights_file", None)
    if path:
        ident["weights_sha256"] = file_digest(Path(path))
        ident["weights"] = "file"  # the path itself does not matter, its content does
    return ident


class FeatureCache:
    """Per-image feature files of one backbone under ``root`` (``<out>/cache``)."""

    def __init__(self, root: Path, backbone: Backbone) -> None:
        self.root = Path(root) / "features"
        self.backbone = backbone
        self.fingerprint = backbone_fingerprint(backbone)
        self._prefix = json.dumps(
            {"bench_cache_version": CACHE_VERSION, "backbone": self.fingerprint},
            sort_keys=True, default=str,
        ).encode()
        self.hits = 0
        self.misses = 0
        self.writable = True  # False after a failed write: warned once, then the run goes on without writing

    def key(self, pixels: np.ndarray) -> str:
        """Content key of one image (uint8 H×W×3 pixels as given to ``backbone.preprocess``)."""
        array = np.ascontiguousarray(pixels)
        digest = hashlib.sha256(self._prefix)
        digest.update(f"|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> FeatureSet | None:
        """The cached features of one image (batch of 1), or None (missing, or unusable: warned)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            layers = record["layers"]
            embedding = record["embedding"]
            if record.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {record.get('version')!r}, expected {CACHE_VERSION}")
            expected = {**self.backbone.channels, **self.backbone.extra_channels}
            if list(layers) != list(expected):
                raise ValueError(f"layers {list(layers)}, expected {list(expected)}")
            for name, value in layers.items():
                if not isinstance(value, torch.Tensor) or value.ndim != 3 or value.shape[0] != expected[name]:
                    raise ValueError(f"layer {name!r} has shape {getattr(value, 'shape', None)}")
            if not isinstance(embedding, torch.Tensor) or embedding.ndim != 1:
                raise ValueError("the embedding is not a vector")
            if record.get("sha256") != content_digest(layers, embedding):
                raise ValueError("its tensors do not match their checksum (altered or damaged)")
        except Exception as exc:  # noqa: BLE001 - unreadable or foreign file: recompute, never crash
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"feature cache file {path} is unusable ({type(exc).__name__}: {reason}); recomputing it",
                stacklevel=2,
            )
            return None
        return FeatureSet({k: v[None] for k, v in layers.items()}, embedding[None])

    def save(self, key: str, features: FeatureSet) -> None:
        """Store the features of one image (batch of 1), atomically; a failure warns once, and
        later saves of this cache are skipped (the disk is full or read-only)."""
        if not self.writable:
            return
        path = self.path(key)
        # clone: a slice would save the whole batch's storage
        layers = {k: v[0].detach().to("cpu").clone() for k, v in features.layers.items()}
        embedding = features.embedding[0].detach().to("cpu").clone()
        record = {"version": CACHE_VERSION, "layers": layers, "embedding": embedding,
                  "sha256": content_digest(layers, embedding)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    torch.save(record, out)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            self.writable = False
            reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
            warnings.warn(f"cannot write feature cache file {path} ({type(exc).__name__}: {reason}); "
                          f"continuing without writing to the cache {self.root}", stacklevel=2)


def encode(
    backbone: Backbone,
    pixels: Sequence[np.ndarray],
    batch_size: int,
    cache: FeatureCache | None = None,
    progress: Callable[[range], object] | None = None,
) -> tuple[torch.Tensor, FeatureSet]:
    """Preprocess and encode ``pixels``, through ``cache`` when given.

    Returns the preprocessed images ``(N, 3, S, S)`` (always computed: cheap, and refiners need
    them) and the features of all images in order. With a cache, only the images whose key is
    not stored go through ``backbone.features`` (in batches of ``batch_size``), and are stored.
    """
    n = len(pixels)
    if not n:
        raise ValueError("no images to encode")
    images = torch.cat([backbone.preprocess(list(pixels[i : i + batch_size])) for i in range(0, n, batch_size)])
    keys = [cache.key(p) for p in pixels] if cache is not None else [None] * n
    found: dict[int, FeatureSet] = {}
    if cache is not None:
        for i, key in enumerate(keys):
            hit = cache.load(key)
            if hit is not None:
                found[i] = hit
        cache.hits += len(found)
        cache.misses += n - len(found)
    missing = [i for i in range(n) if i not in found]
    starts = range(0, len(missing), batch_size)
    for start in progress(starts) if progress is not None else starts:
        rows = missing[start : start + batch_size]
        computed = backbone.features(images[torch.as_tensor(rows)])
        for j, i in enumerate(rows):
            one = computed.select(slice(j, j + 1))
            found[i] = one
            if cache is not None:
                cache.save(keys[i], one)
    device = torch.device(getattr(backbone, "device", "cpu"))  # cached files load on the CPU
    parts = [found[i] for i in range(n)]
    features = FeatureSet(
        {name: torch.cat([p.layers[name].to(device) for p in parts]) for name in parts[0].layers},
        torch.cat([p.embedding.to(device) for p in parts]),
    )
    return images, features
