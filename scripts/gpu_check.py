"""One prepared GPU check (``make gpu-check``): every CUDA path, precision agreement, speed, in minutes.

GPU time is rare and short here, so everything a GPU session should learn is one command that
finishes in a few minutes and writes one JSON file plus a printed table:

1. ``methods``: every method's scoring at its published backbone and input size, on a few
   images with random weights (seeded: the same network on every device), in half precision
   (fp16 autocast on CUDA, bf16 on the CPU) and fp32 on the device, and fp32 on the CPU. Reports
   max |Δ| of the maps (and relative to the reference map's range) and of the image scores, and
   Spearman rank correlations of the pixels and of the image scores, against the fp32 maps.
2. ``musc_speed``: MuSc with ViT-L-14-336 at 518 px, ms/image (backbone + mutual scoring of
   ``--musc-images`` images; goal ≤ 200 ms on an H100-class GPU), the backbone's throughput as
   a share of the device's fp16 matmul peak (bf16 on the CPU) measured here.
3. ``ard``: ARD's training step time (batch 8) and refine ms/image at 518 px (ViT-L-14-336 shapes).
4. ``run``: a tiny ``bench run --device DEVICE`` end to end (all refiners), in a subprocess.

A section that fails is recorded with its error and the others still run; the exit status is 1
if any failed. ``--tiny`` shrinks every size (ViT-B-32 at 96 px, a few steps) so that the whole
check runs on the CPU in seconds: the test suite runs it that way so that it cannot rot.

    python scripts/gpu_check.py --device cuda --out results/gpu_check.json
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tabulate import tabulate

from bench.embedded import generate
from bench.imageio import resize_uint8
from bench.records import FeatureSet, RefineBatch
from bench.registry import BACKBONES, METHODS, REFINERS
from bench.speed import best_seconds, flops_per_image, matmul_peak, synchronize

SPEED_BACKBONE = "ViT-L-14-336"  # MuSc's published backbone, at 518 px
MUSC_GOAL_MS = 200.0


TINY_BACKBONE = ("ViT-B-32", 96)  # a 3x3 grid: room for WinCLIP's 2- and 3-patch windows


def published_backbone(method, tiny: bool) -> tuple[str, dict[str, object]]:
    """The method's published backbone (the first it declares options for, else its default) with
    the method's options; ``tiny``: ViT-B-32 at 96 px with the options the method asks of it."""
    if tiny:
        name, size = TINY_BACKBONE
        return name, {**method.backbone_options(name), "input_size": size}
    name = next(iter(method.info.backbone_options), method.info.default_backbone)
    return name, method.backbone_options(name)


def test_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` images of the embedded synthetic dataset (normal and anomalous), as uint8 arrays."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "syn", seed=seed, categories=["pill"], n_test=n, n_train=0, size=size, progress=False)
        paths = sorted((root / "pill" / "test").rglob("*.png"))[:n]
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def score(name: str, backbone_name: str, backbone_options: dict[str, object],
          images: list[np.ndarray], device: str, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Maps and image scores of method ``name`` on ``images`` with random weights, as float64 arrays."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        method = METHODS.create(name)
        backbone = BACKBONES.create(backbone_name, **{**backbone_options, "weights": "random",
                                                      "device": device, "precision": precision})
        method.bind(backbone)
        pixels = [resize_uint8(im, backbone.input_size, backbone.resample) for im in images]
        features = backbone.features(backbone.preprocess(pixels))
        features.category = "pill"
        out = method.score(features)
    return out.maps.detach().float().cpu().double().numpy(), out.image_scores.detach().float().cpu().double().numpy()


def agreement(ref: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    (ref_maps, ref_scores), (maps, scores) = ref, other
    span = float(ref_maps.max() - ref_maps.min()) or 1.0
    return {
        "max_abs_map": float(np.abs(maps - ref_maps).max()),
        "max_rel_map": float(np.abs(maps - ref_maps).max() / span),
        "max_abs_score": float(np.abs(scores - ref_scores).max()),
        "spearman_pixels": float(spearmanr(ref_maps.ravel(), maps.ravel()).statistic),
        "spearman_scores": float(spearmanr(ref_scores, scores).statistic) if len(scores) > 2 else None,
    }


def check_methods(args) -> list[dict[str, object]]:
    """Half precision and fp32 on the device, and fp32 on the CPU, per method (max |Δ|, Spearman)."""
    rows = []
    images = test_images(args.images, 256 if not args.tiny else 64)
    for name in METHODS.resolve("all"):
        method = METHODS.create(name)
        backbone_name, backbone_options = published_backbone(method, args.tiny)
        row: dict[str, object] = {"method": name, "backbone": backbone_name,
                                  "input_size": backbone_options.get("input_size", "native")}
        try:
            start = time.perf_counter()
            ref = score(name, backbone_name, backbone_options, images, args.device, "fp32")
            others = {f"{args.device}/{args.half}": (args.device, args.half)}  # vs fp32 on the same device
            if torch.device(args.device).type != "cpu":
                others["cpu/fp32"] = ("cpu", "fp32")
            for label, (device, precision) in others.items():
                result = score(name, backbone_name, backbone_options, images, device, precision)
                row.update({f"{label} {k}": v for k, v in agreement(ref, result).items()})
            row["seconds"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - recorded, the other methods still run
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
        rows.append(row)
    return rows


def check_musc_speed(args) -> dict[str, object]:
    """MuSc at its published setting (ViT-L-14-336 @518, fp16 autocast on CUDA): ms/image and % of peak."""
    device, half = args.device, args.half
    method = METHODS.create("musc")
    name, options = (SPEED_BACKBONE, method.backbone_options(SPEED_BACKBONE)) if not args.tiny \
        else published_backbone(method, tiny=True)
    backbone = BACKBONES.create(name, **{**options, "weights": "random", "device": device, "precision": half})
    method.bind(backbone)
    n = args.musc_images
    x = torch.randn(n, 3, backbone.input_size, backbone.input_size, generator=torch.Generator().manual_seed(0)).to(device)
    features: list[FeatureSet] = []
    encode = best_seconds(lambda: features.append(backbone.features(x)), device, rounds=2)
    mutual = best_seconds(lambda: method.score(features[-1]), device, rounds=2)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[half]
    peak = matmul_peak(device, dtype, n=args.matmul_side)
    flops = flops_per_image(backbone, device)
    per_image_ms = 1000 * (encode + mutual) / n
    return {
        "backbone": f"{name} @{backbone.input_size} ({half} autocast)", "images": n,
        "ms_per_image": per_image_ms, "backbone_ms_per_image": 1000 * encode / n,
        "scoring_ms_per_image": 1000 * mutual / n, "goal_ms_per_image": MUSC_GOAL_MS,
        f"{half}_matmul_peak_tflops": peak / 1e12, "backbone_gflop_per_image": flops / 1e9,
        "backbone_share_of_peak": flops * n / encode / peak,
    }


def check_ard(args) -> dict[str, object]:
    """ARD at 518 px with ViT-L-14-336 feature shapes (4 layers × 1024 channels, 37×37 grid)."""
    size, grid, layers, width = (518, 37, 4, 1024) if not args.tiny else (64, 4, 2, 32)
    channels = {f"block{i}": width for i in range(layers)}
    gen = torch.Generator().manual_seed(0)
    n = 8
    images = torch.randn(n, 3, size, size, generator=gen)
    features = FeatureSet(layers={k: torch.randn(n, c, grid, grid, generator=gen) for k, c in channels.items()},
                          embedding=torch.randn(n, 16, generator=gen))
    coarse = torch.rand(n, grid, grid, generator=gen)
    masks = (torch.rand(n, size, size, generator=gen) > 0.9).float()
    batch = RefineBatch(images=images, features=features, coarse=coarse, masks=masks)
    result: dict[str, object] = {"image_size": size, "grid": grid, "batch": n}
    for precision in ("fp32", "bf16"):  # bf16: ARD's precision option
        refiner = REFINERS.create("ard", channels=channels, image_size=size, seed=0, device=args.device,
                                  steps=args.ard_steps, batch_size=n, precision=precision)
        step = best_seconds(lambda r=refiner: r.fit(batch), args.device, rounds=1) / args.ard_steps
        refine = best_seconds(lambda r=refiner: r.refine(images, features, coarse), args.device, rounds=2)
        result.update({f"{precision}_train_step_ms": 1000 * step, f"{precision}_refine_ms_per_image": 1000 * refine / n})
    result["parameters"] = refiner.num_parameters()
    return result


def check_run(args) -> dict[str, object]:
    """A tiny ``bench run --device DEVICE`` end to end, as a user types it (subprocess)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "syn", seed=0, categories=["tile"], n_test=12 if args.tiny else 24,
                        n_train=0, size=64, progress=False)
        command = [sys.executable, "-m", "bench", "run", "--data-root", str(root), "--out", f"{tmp}/out",
                   "--device", args.device, "--set", "pgt.n_groups=2", "--set", "pgt.synth_per_group=8", "--quiet"]
        command += (["--methods", "musc", "--refiners", "ard", "--weights", "random", "--backbone", "ViT-B-32",
                     "--set", "refiner_options.ard.steps=2"] if args.tiny else ["--methods", "musc", "--refiners", "all"])
        start = time.perf_counter()
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=args.run_timeout)
        result = {"command": " ".join(command[1:]), "seconds": time.perf_counter() - start, "returncode": done.returncode}
        if done.returncode != 0:
            result["error"] = done.stderr[-4000:] or done.stdout[-4000:]
        else:
            result["table"] = done.stdout[-4000:]
        return result


SECTIONS = {"methods": check_methods, "musc_speed": check_musc_speed, "ard": check_ard, "run": check_run}


def table(report: dict[str, object]) -> str:
    """The printed summary: one line per method, then the speed sections."""
    lines = []
    methods = report["sections"].get("methods", {}).get("result") or []
    if methods:
        keys = [k for k in dict.fromkeys(k for row in methods for k in row) if k != "traceback"]
        lines.append(tabulate([[_fmt(row.get(k)) for k in keys] for row in methods], headers=keys, tablefmt="github"))
    for name, section in report["sections"].items():
        if name == "methods" and "error" not in section:
            continue
        value = section.get("error") or section.get("result")
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if k != "table")
        lines.append(f"{name} ({section['seconds']:.1f} s): {value}")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --tiny: the dry run)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU dry run of the tests")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check.json"), help="the JSON report")
    parser.add_argument("--half", choices=("fp16", "bf16", "fp32"), default=None,
                        help="the reduced precision compared with fp32 (default: fp16 on CUDA, bf16 on the CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--images", type=int, default=None, help="images per method comparison (default 6)")
    parser.add_argument("--musc-images", type=int, default=None, help="images of the MuSc timing (default 32; tiny 6)")
    parser.add_argument("--ard-steps", type=int, default=None, help="ARD steps timed (default 20; tiny 2)")
    parser.add_argument("--run-timeout", type=float, default=240.0, help="seconds for the bench run section (tiny: 600)")
    args = parser.parse_args(argv)
    args.half = args.half or ("fp16" if torch.device(args.device).type == "cuda" else "bf16")
    args.images = args.images or 6  # MuSc scores each image against >= 5 others at interval 0.3
    args.musc_images = args.musc_images or (6 if args.tiny else 32)
    args.ard_steps = args.ard_steps or (2 if args.tiny else 20)
    args.matmul_side = 256 if args.tiny else 8192
    args.run_timeout = 600.0 if args.tiny and args.run_timeout == 240.0 else args.run_timeout
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; known: {', '.join(SECTIONS)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device_name = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else platform.processor()
    report: dict[str, object] = {"device": args.device, "device_name": device_name, "tiny": args.tiny,
                                 "torch": torch.__version__, "threads": torch.get_num_threads(), "sections": {}}
    failed = False
    for name in args.sections.split(","):
        start = time.perf_counter()
        entry: dict[str, object] = {}
        try:
            entry["result"] = SECTIONS[name](args)
            failed |= name == "run" and entry["result"]["returncode"] != 0
            failed |= name == "methods" and any("error" in row for row in entry["result"])
        except Exception as exc:  # noqa: BLE001 - recorded, the other sections still run
            entry.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            failed = True
        synchronize(args.device)
        entry["seconds"] = time.perf_counter() - start
        report["sections"][name] = entry
        print(f"[gpu-check] {name}: {entry['seconds']:.1f} s{' FAILED' if 'error' in entry else ''}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(table(report))
    print(f"[gpu-check] report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
