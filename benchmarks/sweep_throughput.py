"""Sweep throughput: the `run` engine against a seed-style loop and against pure compute.

On the same U-Net checkpoint and the same N test images, over the same cells, time:
  (a) a seed-style loop: per image and level, perturb, preprocess (Albumentations
      LongestMaxSize + PadIfNeeded + Normalize), single-image fp32 forward, resize the
      prediction back, metrics;
  (b) the `run` engine (petseg_bench.engine.sweep.run_sweep);
  (c) pure batched forward of the same number of image-levels, no data work;
  (d) this machine's matmul rate (2048^3, all torch threads) in the engine's precision
      (bf16 where the CPU has native bf16, else fp32: emulated bf16 would take minutes).
and print image-levels/s of a, b, c, the ratios b/a and b/c, and b's achieved GFLOP/s
as a fraction of d. Every figure comes from this one run.

    python benchmarks/sweep_throughput.py --profile paper --images 8
    python benchmarks/sweep_throughput.py --profile quick --images 60
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_checkpoints import save_untrained  # noqa: E402  (benchmarks/, beside this script)
from petseg_bench.config import PROFILES  # noqa: E402
from petseg_bench.data.cache import prepare  # noqa: E402
from petseg_bench.data.split import limit as limit_positions  # noqa: E402
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


def model_flops(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image=torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


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
    """(c): the engine's batched forward (its precision, channels_last) with no data work at all."""
    size = predictor.config.in_size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    predictor.logits(x)  # warm-up
    done = 0
    t0 = time.perf_counter()
    while done < n:
        predictor.logits(x)
        done += batch
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A U-Net at the profile's width; throughput does not depend on the weights.
        ckpt = save_untrained(tmp / "ckpt", "unet", args.profile, seed=seed)
        pure = load_predictor(ckpt, runtime, expect_model="unet")  # BatchNorm folded: the model the engine runs
        spec, config = pure.spec, pure.config
        test = prepare(Path(args.data_root), "test", "nearest")
        positions = limit_positions(np.arange(len(test)), args.images, seed)
        ids = [test.names[int(p)] for p in positions]
        images = [test.image(int(p)) for p in positions]
        labels = [test.label(int(p)) for p in positions]
        cells = [("clean", 0)] + [(p, lv) for p in PERTURBATIONS for lv in levels]
        n_image_levels = len(cells) * len(ids)

        flops = model_flops(spec.build(config).eval(), config.in_size)  # FLOPs do not depend on weights or BN folding
        d = matmul_gflops(runtime)
        t0 = time.perf_counter()
        plan = SweepPlan(["unet"], PERTURBATIONS, levels, seed=seed, batch_size=args.batch_size,
                         limit=args.images, compile=args.compile)
        record = run_sweep(SweepJob(plan, tmp / "ckpt", tmp / "run", Path(args.data_root)), log=lambda m: None)
        b_total = n_image_levels / (time.perf_counter() - t0)
        b = record["image_levels_per_s"]
        if args.compile:
            pure.compile(args.batch_size)
        c = pure_forward(pure, n_image_levels, args.batch_size)
        # The seed ran the model as trained: fp32, BatchNorm not folded.
        a = None if args.skip_seed_style else seed_style(
            load_predictor(ckpt, Runtime.choose(precision="fp32"), expect_model="unet", fold_bn=False).model,
            config, images, labels, ids, levels, seed, n_image_levels)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "torch": torch.__version__,
        "profile": args.profile,
        "model": f"unet base {config.base_channels} at {config.in_size} px",
        "test_images": len(ids),
        "cells": len(cells),
        "image_levels": n_image_levels,
        "runtime": runtime.describe(),
        "compile": args.compile,
        "model_gflop_per_image": round(flops / 1e9, 3),
        "a_seed_style_image_levels_per_s": None if a is None else round(a, 3),
        "b_engine_image_levels_per_s": round(b, 3),
        "b_engine_including_setup_image_levels_per_s": round(b_total, 3),
        "c_pure_forward_image_levels_per_s": round(c, 3),
        f"d_{runtime.precision}_matmul_gflops": round(d, 1),
        "speedup_engine_over_seed_style": None if a is None else round(b / a, 3),
        "time_ratio_engine_over_pure_forward": round(c / b, 3),
        "engine_gflops": round(b * flops / 1e9, 1),
        "engine_fraction_of_matmul_rate": round(b * flops / 1e9 / d, 3),
    }
    print(f"profile {args.profile}{' (torch.compile)' if args.compile else ''}: U-Net base {config.base_channels} at {config.in_size} px, "
          f"{flops / 1e9:.2f} GFLOP/image, {len(ids)} images x {len(cells)} cells")
    if a is not None:
        print(f"(a) seed-style loop      {a:9.2f} image-levels/s")
    print(f"(b) run engine           {b:9.2f} image-levels/s  ({b_total:.2f} with setup)")
    print(f"(c) pure batched forward {c:9.2f} image-levels/s")
    print(f"(d) {runtime.precision} matmul          {d:9.1f} GFLOP/s")
    if a is not None:
        print(f"b/a = {b / a:.2f}x   ", end="")
    print(f"c/b = {c / b:.2f} (engine time over pure compute)   b achieves {b * flops / 1e9:.1f} GFLOP/s "
          f"= {b * flops / 1e9 / d:.0%} of d")
    suffix = "_compiled" if args.compile else ""
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"sweep_throughput_{args.profile}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
