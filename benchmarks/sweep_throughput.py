"""Sweep throughput: the `run` engine against a seed-style loop and against pure compute.

For each model of ``--models`` (any registered model, configured as ``petseg-bench train
MODEL --profile P`` configures it, with untrained weights), on the same N test images,
over the same cells, time:
  (a) a seed-style loop: per image and level, perturb, preprocess (Albumentations
      LongestMaxSize + PadIfNeeded + Normalize), single-image fp32 forward, resize the
      prediction back, metrics (only for models whose one input is the image: the
      seed's loop fed nothing else);
  (b) the `run` engine (petseg_bench.engine.sweep.run_sweep), the model swept alone;
  (c) pure batched forward of the same number of image-levels, no data work (the
      frozen backbone's features and the click included: the model needs them),
      timed half before and half after (b);
  (d) this machine's matmul rate (2048^3, all torch threads) in the engine's precision
      (bf16 where the CPU has native bf16, else fp32: emulated bf16 would take minutes).
and print image-levels/s of a, b, c, the ratios b/a and c/b, and b's achieved GFLOP/s
(model and backbone) as a fraction of d. Every figure comes from this one run.

    python benchmarks/sweep_throughput.py --profile paper --images 8
    python benchmarks/sweep_throughput.py --profile quick --images 60
    python benchmarks/sweep_throughput.py --profile reference --images 16 --batch-size 16 --skip-seed-style \
        --models unet,effnet_unet,clip_unet,point_clip_unet,clip_only,autoencoder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import contextlib  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_checkpoints import save_untrained  # noqa: E402  (benchmarks/, beside this script)
from petseg_bench.backbones import FeatureCache  # noqa: E402
from petseg_bench.config import PROFILES  # noqa: E402
from petseg_bench.data.cache import prepare  # noqa: E402
from petseg_bench.data.split import limit as limit_positions  # noqa: E402
from petseg_bench.engine.inputs import model_inputs  # noqa: E402
from petseg_bench.engine.predictor import Predictor, load_predictor  # noqa: E402
from petseg_bench.engine.runtime import Runtime  # noqa: E402
from petseg_bench.engine.sweep import SweepJob, SweepPlan, run_sweep  # noqa: E402
from petseg_bench.metrics import confusion_matrix  # noqa: E402
from petseg_bench.perturbation import image_rng  # noqa: E402
from petseg_bench.plugins import get_registry  # noqa: E402
from petseg_bench.provenance import hardware  # noqa: E402

PERTURBATIONS = ["gaussian_noise", "gaussian_blur", "salt_and_pepper", "occlusion"]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(runtime: Runtime, n: int = 2048, reps: int = 10) -> float:
    """(d): n^3 matmuls in the runtime's precision on its device."""
    dtype = DTYPES[runtime.precision]
    a = torch.randn(n, n, dtype=dtype, device=runtime.device)
    b = torch.randn(n, n, dtype=dtype, device=runtime.device)
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def model_flops(predictor: Predictor) -> float:
    """FLOPs of one image through the model and its frozen backbone (if any), in fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    size = predictor.config.in_size
    x, points = dummy_batch(predictor, 1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        inputs = model_inputs(predictor.spec, x, points, predictor.backbone, FeatureCache(), contextlib.nullcontext)
        predictor.model(**inputs)
    return float(counter.get_total_flops())


def dummy_batch(predictor: Predictor, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random uint8 letterboxed batch, and a click in the middle for a model that takes one."""
    size = predictor.config.in_size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return x, (torch.full((batch, 2), size // 2, dtype=torch.int64) if predictor.needs_clicks else None)


def seed_style(model, config, images, labels, ids, levels, seed, useful: int) -> float:
    """(a): the seed's robustness loop, one image at a time in fp32. Like the seed's
    robustness_test.py it runs levels 0..L for every perturbation (level 0 again each
    time); the rate counts the image-levels of the same results table as the engine's."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    pre = A.Compose([A.LongestMaxSize(max_size=config.in_size, interpolation=0),
                     A.PadIfNeeded(min_height=config.in_size, min_width=config.in_size, border_mode=0),
                     A.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), ToTensorV2()])
    reg = get_registry()
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    device = next(model.parameters()).device
    cells = [(p, lv) for p in PERTURBATIONS for lv in [0] + levels]
    t0 = time.perf_counter()
    with torch.no_grad():
        for pert, level in cells:
            spec = reg.get("perturbation", pert)
            for img, lab, i in zip(images, labels, ids):
                if level > 0:
                    img = spec.apply([img], spec.levels[level], [image_rng(seed, pert, level, i)])[0]
                x = pre(image=img)["image"].unsqueeze(0).to(device)
                pred = model(image=x).argmax(1, keepdim=True).float()
                pred = F.interpolate(pred, size=lab.shape, mode="nearest")[0, 0].to(torch.uint8).cpu().numpy()
                confusion_matrix(pred, lab)
    return useful / (time.perf_counter() - t0)


def pure_forward(predictor: Predictor, n: int, batch: int) -> float:
    """Seconds of (c): the engine's batched forward (its precision, channels_last, the
    frozen backbone's features, the click) for ``n`` images, with no data work at all."""
    x, points = dummy_batch(predictor, batch)
    done = 0
    t0 = time.perf_counter()
    while done < n:
        predictor.logits(x, points)
        done += batch
    return (time.perf_counter() - t0) * n / done


def measure(name: str, args, data: dict, tmp: Path, runtime: Runtime, d: float) -> dict:
    """(a), (b), (c) of one model over the same cells; (c) is timed half before and half
    after (b), so a background load that drifts hits both alike."""
    seed, levels, n = data["seed"], data["levels"], data["image_levels"]
    # The model at the profile's width; throughput does not depend on the weights.
    ckpt = save_untrained(tmp / "ckpt", name, args.profile, seed=seed)
    pure = load_predictor(ckpt, runtime, expect_model=name)  # BatchNorm folded: the model the engine runs
    config = pure.config
    flops = model_flops(pure)  # FLOPs do not depend on weights or BN folding
    if args.compile:
        pure.compile(args.batch_size)
    pure.logits(*dummy_batch(pure, args.batch_size))  # warm-up
    c_time = pure_forward(pure, n // 2, args.batch_size)
    t0 = time.perf_counter()
    plan = SweepPlan([name], PERTURBATIONS, levels, seed=seed, batch_size=args.batch_size,
                     limit=args.images, compile=args.compile)
    record = run_sweep(SweepJob(plan, tmp / "ckpt", tmp / f"run-{name}", Path(args.data_root)), log=lambda m: None)
    b_total = n / (time.perf_counter() - t0)
    b = record["image_levels_per_s"]
    c = n / (c_time + pure_forward(pure, n - n // 2, args.batch_size))
    # The seed ran the model as trained: fp32, BatchNorm not folded, one image at a time;
    # its loop fed the image alone, so only models with no other input have one.
    a = None if args.skip_seed_style or tuple(pure.spec.inputs) != ("image",) else seed_style(
        load_predictor(ckpt, Runtime.choose(precision="fp32"), expect_model=name, fold_bn=False).model,
        config, data["images"], data["labels"], data["ids"], levels, seed, n)
    row = {
        "model": f"{name} base {config.base_channels} at {config.in_size} px",
        "backbone": pure.spec.backbone_key(config),
        "model_gflop_per_image": round(flops / 1e9, 3),
        "a_seed_style_image_levels_per_s": None if a is None else round(a, 3),
        "b_engine_image_levels_per_s": round(b, 3),
        "b_engine_including_setup_image_levels_per_s": round(b_total, 3),
        "c_pure_forward_image_levels_per_s": round(c, 3),
        "speedup_engine_over_seed_style": None if a is None else round(b / a, 3),
        "time_ratio_engine_over_pure_forward": round(c / b, 3),
        "engine_gflops": round(b * flops / 1e9, 1),
        "engine_fraction_of_matmul_rate": round(b * flops / 1e9 / d, 3),
    }
    print(f"{name}: base {config.base_channels} at {config.in_size} px, {flops / 1e9:.2f} GFLOP/image"
          + (f"; (a) seed-style {a:.2f}" if a is not None else "")
          + f"; (b) engine {b:.2f} ({b_total:.2f} with setup); (c) pure forward {c:.2f} image-levels/s; "
          + (f"b/a = {b / a:.2f}x; " if a is not None else "")
          + f"c/b = {c / b:.2f} (engine time over pure compute); b = {b * flops / 1e9:.1f} GFLOP/s "
          f"= {b * flops / 1e9 / d:.0%} of d", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="unet", help="Registered model names, comma-separated; each is swept alone.")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--levels", default="1,5,9")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-root", default=os.environ.get("PETSEG_DATA", "../shared/data/oxford-iiit-pet"))
    ap.add_argument("--skip-seed-style", action="store_true", help="Only (b), (c), (d).")
    ap.add_argument("--compile", action="store_true", help="Engine and pure forward with torch.compile.")
    ap.add_argument("--out", default=None, help="JSON result (default: results/sweep_throughput_<profile>[_compiled].json).")
    args = ap.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    seed = 0
    runtime = Runtime.choose()
    test = prepare(Path(args.data_root), "test", "nearest")
    positions = limit_positions(np.arange(len(test)), args.images, seed)
    cells = [("clean", 0)] + [(p, lv) for p in PERTURBATIONS for lv in levels]
    data = {"seed": seed, "levels": levels, "ids": [test.names[int(p)] for p in positions],
            "images": [test.image(int(p)) for p in positions], "labels": [test.label(int(p)) for p in positions],
            "image_levels": len(cells) * len(positions)}
    d = matmul_gflops(runtime)
    print(f"CPU: {hardware()}; runtime {runtime.describe()}; profile {args.profile}"
          f"{' (torch.compile)' if args.compile else ''}; {len(positions)} images x {len(cells)} cells; "
          f"(d) {runtime.precision} matmul {d:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: measure(name, args, data, Path(tmp), runtime, d) for name in args.models.split(",")}
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "torch": torch.__version__,
        "profile": args.profile,
        "test_images": len(positions),
        "cells": len(cells),
        "image_levels": data["image_levels"],
        "runtime": runtime.describe(),
        "compile": args.compile,
        f"d_{runtime.precision}_matmul_gflops": round(d, 1),
        "models": rows,
    }
    if len(rows) == 1:  # one model: its figures at the top level too, where they always were
        result.update(next(iter(rows.values())))
    suffix = "_compiled" if args.compile else ""
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"sweep_throughput_{args.profile}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
