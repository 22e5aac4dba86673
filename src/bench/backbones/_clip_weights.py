"""Where the open_clip backbone's weights come from: a pretrained tag's cached file (downloaded only when
missing and a network is reachable), or a checkpoint path (see ``bench.backbones.openclip``)."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path

from bench.errors import WeightsError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
PROBE_TIMEOUT_S = 3.0  # network reachability probe before any download attempt


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


def looks_like_path(weights: str) -> bool:
    return (
        os.sep in weights
        or "/" in weights
        or weights.startswith(("~", "."))
        or weights.lower().endswith(CHECKPOINT_SUFFIXES)
        or Path(weights).is_file()
    )


@contextlib.contextmanager
def quiet_open_clip():
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
