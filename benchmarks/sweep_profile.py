"""Where a sweep's time goes: the engine's stages timed inside the engine, and the
forward's operators (torch.profiler, grouped by op).

One model at a profile (untrained weights: time does not depend on them) swept by the
engine's own ``run_group`` over N real test images and the cells of
``sweep_throughput.py`` (clean + 4 perturbations x levels 1, 5, 9), each stage wrapped in
a clock: perturbation at original resolution, letterbox to the model input
(``make_batch``), the forward (``Predictor.logits``: normalise, backbone features,
model) and the scoring of the logits (``inference.score``: resize back to the original
size, argmax, confusion counts); the rest of the wall time is Python overhead. On the
CPU the engine runs the stages one after another (the per-image ones split over the
forward's threads), so they add up to its wall time. ``--alone`` times each stage by
itself on one thread instead (the per-image stages) as the seed's loop orders them: the
engine before issue 13 ran them on helper threads beside the forward, where they cannot
be clocked apart. ``--ops N`` adds the forward's top N operators by self CPU time.

    python benchmarks/sweep_profile.py --profile quick --images 60
    python benchmarks/sweep_profile.py --profile paper --images 8 --batch-size 8 --ops 12
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_checkpoints import save_untrained  # noqa: E402  (benchmarks/, beside this script)
from petseg_bench.config import PROFILES  # noqa: E402
from petseg_bench.data.cache import prepare  # noqa: E402
from petseg_bench.data.split import limit as limit_positions  # noqa: E402
from petseg_bench.engine import inference  # noqa: E402
from petseg_bench.engine import groups as sweep_mod  # noqa: E402 - the sweep's group computation
from petseg_bench.engine.predictor import load_predictor  # noqa: E402
from petseg_bench.engine.runtime import Runtime  # noqa: E402
from petseg_bench.perturbation import perturb  # noqa: E402
from petseg_bench.plugins import get_registry  # noqa: E402
from petseg_bench.provenance import bf16_matmul_units, hardware, hardware_info  # noqa: E402

PERTURBATIONS = ["gaussian_noise", "gaussian_blur", "salt_and_pepper", "occlusion"]
STAGES = ("perturb", "letterbox", "forward", "score")


@contextlib.contextmanager
def torch_threads(n: int):
    """``n`` torch threads meanwhile (the per-image stages split over as many)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def stages_alone(pr, data: sweep_mod.SweepData, cells) -> dict[str, float]:
    """Seconds of each stage over every cell and batch, each run by itself, the
    per-image stages on one thread."""
    clock = dict.fromkeys(STAGES, 0.0)
    sizes, clicks, bs = [pr.config.in_size], pr.needs_clicks, data.batch_size
    for pert, level in cells:
        for s in range(0, len(data.images), bs):
            chunk = slice(s, s + bs)
            t0 = time.perf_counter()
            with torch_threads(1):
                imgs = data.images[chunk] if level == 0 else perturb(data.perturbations[pert], data.images[chunk],
                                                                     level, data.ids[chunk], data.seed)
                t1 = time.perf_counter()
                b = inference.make_batch(imgs, data.labels[chunk], sizes, clicks)
            t2 = time.perf_counter()
            x, boxes, points = b.boxed[pr.config.in_size]
            logits = pr.logits(x, points)
            t3 = time.perf_counter()
            with torch_threads(1):
                inference.score(logits, boxes, b.labels, pr.config.n_classes)
            t4 = time.perf_counter()
            for k, a, z in (("perturb", t0, t1), ("letterbox", t1, t2), ("forward", t2, t3), ("score", t3, t4)):
                clock[k] += z - a
    return clock


def stages_in_engine(pr, data: sweep_mod.SweepData, cells) -> dict[str, float]:
    """Seconds of each stage inside ``run_group`` over every cell, and the rest."""
    clock = dict.fromkeys(STAGES, 0.0)

    def timed(key: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock[key] += time.perf_counter() - t0
        return wrapper

    # groups.py calls in_parallel for the perturbation alone; the other stages by name
    patches = [(sweep_mod, "in_parallel", "perturb"), (sweep_mod, "make_batch", "letterbox"),
               (inference, "score", "score")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, key in patches:
        setattr(obj, name, timed(key, getattr(obj, name)))
    pr.logits = timed("forward", pr.logits)
    try:
        t0 = time.perf_counter()
        for pert, level in cells:
            sweep_mod.run_group(data, pert, level, [pr.spec.name])
        wall = time.perf_counter() - t0
    finally:
        del pr.logits  # the class's method again
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    clock["python"] = wall - sum(clock.values())
    return clock


def op_table(pr, batch: int, rows: int) -> str:
    """The forward's top operators by self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    size = pr.config.in_size
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    points = torch.full((batch, 2), size // 2) if pr.needs_clicks else None
    pr.logits(x, points)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            pr.logits(x, points)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="unet")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--alone", action="store_true", help="Time each stage by itself (per-image ones on one thread).")
    ap.add_argument("--ops", type=int, default=0, help="Also print the forward's top N operators.")
    ap.add_argument("--data-root", default=os.environ.get("PETSEG_DATA", "../shared/data/oxford-iiit-pet"))
    ap.add_argument("--out", default=None, help="JSON of the stage times.")
    args = ap.parse_args()
    test = prepare(Path(args.data_root), "test", "nearest")
    positions = [int(p) for p in limit_positions(np.arange(len(test)), args.images, 0)]
    runtime = Runtime.choose()
    with tempfile.TemporaryDirectory() as tmp:
        pr = load_predictor(save_untrained(Path(tmp), args.model, args.profile), runtime, expect_model=args.model)
    reg = get_registry()
    data = sweep_mod.SweepData([test.image(p) for p in positions], [test.label(p) for p in positions],
                               [test.names[p] for p in positions], {args.model: pr},
                               {p: reg.get("perturbation", p) for p in PERTURBATIONS}, 0, args.batch_size)
    cells = [("clean", 0)] + [(p, lv) for p in PERTURBATIONS for lv in (1, 5, 9)]
    measure = stages_alone if args.alone else stages_in_engine
    measure(pr, data, cells[:2])  # warm-up
    clock = measure(pr, data, cells)
    n = len(positions) * len(cells)
    total = sum(clock.values())
    how = "each stage alone, per-image stages on 1 thread" if args.alone else "inside the engine"
    info = hardware_info()
    print(f"CPU: {hardware(info)}; bf16 matmul on {bf16_matmul_units(info)}; runtime {runtime.describe()}; "
          f"{args.model} at {args.profile} "
          f"({pr.config.in_size} px); {len(positions)} images x {len(cells)} cells; {how}")
    for k, v in clock.items():
        print(f"  {k:10s} {1e3 * v / n:7.3f} ms/image-level  {v / total:6.1%}")
    print(f"  total / forward: {total / clock['forward']:.2f}")
    if args.ops:
        print(op_table(pr, args.batch_size, args.ops))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "hardware": hardware(info), "hardware_info": info, "runtime": runtime.describe(), "model": args.model, "profile": args.profile,
            "images": len(positions), "cells": len(cells), "how": how,
            "ms_per_image_level": {k: round(1e3 * v / n, 3) for k, v in clock.items()},
            "total_over_forward": round(total / clock["forward"], 3)}, indent=2) + "\n")
        print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
