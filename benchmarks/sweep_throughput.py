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
      frozen backbone's features and the click included: the model needs them; the
      batch in the engine's channels_last layout);
  (d) this machine's matmul rate (2048^3, all torch threads) in the engine's precision
      (bf16 where the CPU has native bf16, else fp32: emulated bf16 would take minutes).
(a), (c) and (d) run interleaved with (b): after each of the engine's (perturbation,
level) groups, a pure forward of as many image-levels, two matmuls and the seed-style
loop's passes for that cell, their time taken out of the engine's; so a background
load that comes and goes within seconds (a shared machine) hits all four alike.
Printed: image-levels/s of a, b, c, the ratios b/a and c/b, and b's and c's achieved GFLOP/s (model and backbone) as a fraction of d. Every
figure comes from this one run, on the CPU its header names (model, the flags that
decide the bf16 kernels, torch threads, precision; the JSON keeps the same under
``hardware_info``).

``--together`` also sweeps all of ``--models`` in one run, as ``petseg-bench run`` does
(each batch perturbed and letterboxed once for every model, one backbone pass per
backbone), against the same models' forwards with the backbone shared alike: the c/b a
real multi-model sweep sees (key ``together``).

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
from petseg_bench.engine import backend as backend_mod  # noqa: E402 - its LocalBackend calls compute_group
from petseg_bench.engine import sweep as sweep_mod  # noqa: E402
from petseg_bench.engine.sweep import SweepJob, SweepPlan, run_sweep  # noqa: E402
from petseg_bench.metrics import confusion_matrix  # noqa: E402
from petseg_bench.perturbation import image_rng  # noqa: E402
from petseg_bench.plugins import get_registry  # noqa: E402
from petseg_bench.provenance import bf16_matmul_units, hardware, hardware_info  # noqa: E402

PERTURBATIONS = ["gaussian_noise", "gaussian_blur", "salt_and_pepper", "occlusion"]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Matmul:
    """(d): n^3 matmuls in the runtime's precision on its device, timed in bursts."""

    def __init__(self, runtime: Runtime, n: int = 2048):
        dtype = DTYPES[runtime.precision]
        self.n = n
        self.a = torch.randn(n, n, dtype=dtype, device=runtime.device)
        self.b = torch.randn(n, n, dtype=dtype, device=runtime.device)
        self.sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
        self.flop = self.seconds = 0.0
        self.burst(2)  # warm-up, not counted
        self.flop = self.seconds = 0.0

    def burst(self, reps: int) -> None:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            self.a @ self.b
        self.sync()
        self.seconds += time.perf_counter() - t0
        self.flop += 2 * self.n ** 3 * reps

    @property
    def gflops(self) -> float:
        return self.flop / self.seconds / 1e9


def matmul_gflops(runtime: Runtime, reps: int = 10) -> float:
    """(d) alone: one burst of ``reps`` matmuls."""
    mm = Matmul(runtime)
    mm.burst(reps)
    return mm.gflops


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
    """A random uint8 letterboxed batch in the layout ``letterbox_batch`` gives (channels_last),
    and a click in the middle for a model that takes one."""
    size = predictor.config.in_size
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return x.permute(0, 3, 1, 2), (torch.full((batch, 2), size // 2, dtype=torch.int64) if predictor.needs_clicks else None)


class SeedStyle:
    """(a): the seed's robustness loop, one image at a time in fp32, timed cell by cell.
    Like the seed's robustness_test.py it runs levels 0..L for every perturbation (level
    0 again each time): the engine's clean cell costs it one level-0 pass per perturbation."""

    def __init__(self, model, config, data: dict):
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        self.pre = A.Compose([A.LongestMaxSize(max_size=config.in_size, interpolation=0),
                              A.PadIfNeeded(min_height=config.in_size, min_width=config.in_size, border_mode=0),
                              A.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), ToTensorV2()])
        self.model = model.float().to(memory_format=torch.contiguous_format).eval()
        self.data = data
        self.seconds = 0.0

    @torch.no_grad()
    def engine_cell(self, pert: str, level: int) -> None:
        """The seed's passes for the engine's cell (pert, level)."""
        for p in PERTURBATIONS if level == 0 else [pert]:
            self.seed_cell(p, level)

    def seed_cell(self, pert: str, level: int) -> None:
        spec = get_registry().get("perturbation", pert)
        device = next(self.model.parameters()).device
        t0 = time.perf_counter()
        for img, lab, i in zip(self.data["images"], self.data["labels"], self.data["ids"]):
            if level > 0:
                img = spec.apply([img], spec.levels[level], [image_rng(self.data["seed"], pert, level, i)])[0]
            x = self.pre(image=img)["image"].unsqueeze(0).to(device)
            pred = self.model(image=x).argmax(1, keepdim=True).float()
            pred = F.interpolate(pred, size=lab.shape, mode="nearest")[0, 0].to(torch.uint8).cpu().numpy()
            confusion_matrix(pred, lab)
        self.seconds += time.perf_counter() - t0


def pure_forward_shared(predictors: list[Predictor], n: int, batch: int) -> float:
    """Seconds of (c) for one or several models as one run computes them: per batch one dummy
    input per input size and one frozen-backbone pass per backbone (a shared
    :class:`FeatureCache`), then every model's forward."""
    inputs = {}
    for pr in predictors:  # a click in the middle for every size; only point models take it
        x, _ = dummy_batch(pr, batch)
        inputs[pr.config.in_size] = (x, torch.full((batch, 2), pr.config.in_size // 2, dtype=torch.int64))
    done = 0
    t0 = time.perf_counter()
    while done < n:
        cache = FeatureCache()
        for pr in predictors:
            x, points = inputs[pr.config.in_size]
            pr.logits(x, points if pr.needs_clicks else None, cache)
        done += batch
    return (time.perf_counter() - t0) * n / done


@contextlib.contextmanager
def interleaved(pure_seconds, mm: Matmul, seed: SeedStyle | None, clock: dict):
    """The engine's groups with (c) (``pure_seconds(images)``), (d) and (a) run after each: ``clock`` gets the
    seconds of the pure forwards (``c``) and of all that was inserted (``inserted``),
    and the wall seconds of ``compute_cells`` (``compute``)."""
    real_group, real_cells = backend_mod.compute_group, sweep_mod.compute_cells

    def group(data, pert, level, *args, **kwargs):
        out = real_group(data, pert, level, *args, **kwargs)
        t0 = time.perf_counter()
        clock["c"] += pure_seconds(len(data.images))
        clock["c_images"] += len(data.images)
        mm.burst(2)
        if seed is not None:
            seed.engine_cell(pert, level)
        clock["inserted"] += time.perf_counter() - t0
        return out

    def cells(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_cells(*args, **kwargs)
        finally:
            clock["compute"] += time.perf_counter() - t0

    backend_mod.compute_group, sweep_mod.compute_cells = group, cells
    try:
        yield clock
    finally:
        backend_mod.compute_group, sweep_mod.compute_cells = real_group, real_cells


def measure(name: str, args, data: dict, tmp: Path, runtime: Runtime) -> dict:
    """(a), (b), (c), (d) of one model over the same cells, (c) and (d) interleaved with (b)."""
    seed, levels, n = data["seed"], data["levels"], data["image_levels"]
    # The model at the profile's width; throughput does not depend on the weights.
    ckpt = save_untrained(tmp / "ckpt", name, args.profile, seed=seed)
    pure = load_predictor(ckpt, runtime, expect_model=name)  # BatchNorm folded: the model the engine runs
    config = pure.config
    flops = model_flops(pure)  # FLOPs do not depend on weights or BN folding
    if args.compile:
        pure.compile(args.batch_size)
    pure.logits(*dummy_batch(pure, args.batch_size))  # warm-up
    mm = Matmul(runtime)
    # The seed ran the model as trained: fp32, BatchNorm not folded, one image at a time;
    # its loop fed the image alone, so only models with no other input have one.
    seed_loop = None if args.skip_seed_style or tuple(pure.spec.inputs) != ("image",) else SeedStyle(
        load_predictor(ckpt, Runtime.choose(precision="fp32"), expect_model=name, fold_bn=False).model, config, data)
    clock = dict.fromkeys(("c", "c_images", "inserted", "compute"), 0.0)
    t0 = time.perf_counter()
    plan = SweepPlan([name], PERTURBATIONS, levels, seed=seed, batch_size=args.batch_size,
                     limit=args.images, compile=args.compile)
    with interleaved(lambda k: pure_forward_shared([pure], k, args.batch_size), mm, seed_loop, clock):
        run_sweep(SweepJob(plan=plan, checkpoints_dir=tmp / "ckpt", run_dir=tmp / f"run-{name}", data_root=Path(args.data_root)), log=lambda m: None)
    b_total = n / (time.perf_counter() - t0 - clock["inserted"])
    b = n / (clock["compute"] - clock["inserted"])
    c = clock["c_images"] / clock["c"]
    d = mm.gflops
    a = None if seed_loop is None else n / seed_loop.seconds  # the image-levels of the same results table
    row = {
        "model": f"{name} base {config.options.get('base_channels')} at {config.in_size} px",
        "backbone": pure.spec.backbone_key(config),
        "model_gflop_per_image": round(flops / 1e9, 3),
        "a_seed_style_image_levels_per_s": None if a is None else round(a, 3),
        "b_engine_image_levels_per_s": round(b, 3),
        "b_engine_including_setup_image_levels_per_s": round(b_total, 3),
        "c_pure_forward_image_levels_per_s": round(c, 3),
        "speedup_engine_over_seed_style": None if a is None else round(b / a, 3),
        "pure_forward_over_seed_style": None if a is None else round(c / a, 3),
        "time_ratio_engine_over_pure_forward": round(c / b, 3),
        f"d_{runtime.precision}_matmul_gflops": round(d, 1),
        "engine_gflops": round(b * flops / 1e9, 1),
        "engine_fraction_of_matmul_rate": round(b * flops / 1e9 / d, 3),
        "pure_forward_fraction_of_matmul_rate": round(c * flops / 1e9 / d, 3),
    }
    print(f"{name}: base {config.options.get('base_channels')} at {config.in_size} px, {flops / 1e9:.2f} GFLOP/image"
          + (f"; (a) seed-style {a:.2f}" if a is not None else "")
          + f"; (b) engine {b:.2f} ({b_total:.2f} with setup); (c) pure forward {c:.2f} image-levels/s; "
          + (f"b/a = {b / a:.2f}x, c/a = {c / a:.2f}x; " if a is not None else "")
          + f"c/b = {c / b:.2f} (engine time over pure compute); (d) {d:.1f} GFLOP/s; b = {b * flops / 1e9:.1f} GFLOP/s "
          f"= {b * flops / 1e9 / d:.0%} of d, c = {c * flops / 1e9 / d:.0%} of d", flush=True)
    return row


def measure_together(names: list[str], args, data: dict, tmp: Path, runtime: Runtime) -> dict:
    """(b), (c), (d) of several models swept in one run, as ``run --models a,b,...`` sweeps
    them: each batch perturbed and letterboxed once for all, one backbone pass per
    backbone. (c) is the same models' forwards with the backbone shared the same way."""
    seed, levels, n = data["seed"], data["levels"], data["image_levels"]
    pures = []
    for name in names:
        pr = load_predictor(save_untrained(tmp / "ckpt", name, args.profile, seed=seed), runtime, expect_model=name)
        if args.compile:
            pr.compile(args.batch_size)
        pures.append(pr)
    flops = sum(model_flops(pr) for pr in pures)  # a shared backbone counted once per model: an upper bound
    pure_forward_shared(pures, args.batch_size, args.batch_size)  # warm-up
    mm = Matmul(runtime)
    clock = dict.fromkeys(("c", "c_images", "inserted", "compute"), 0.0)
    plan = SweepPlan(names, PERTURBATIONS, levels, seed=seed, batch_size=args.batch_size,
                     limit=args.images, compile=args.compile)
    with interleaved(lambda k: pure_forward_shared(pures, k, args.batch_size), mm, None, clock):
        run_sweep(SweepJob(plan=plan, checkpoints_dir=tmp / "ckpt", run_dir=tmp / "run-together", data_root=Path(args.data_root)), log=lambda m: None)
    b = n / (clock["compute"] - clock["inserted"])
    c = clock["c_images"] / clock["c"]
    row = {"models": names, "b_engine_image_levels_per_s": round(b, 3), "c_pure_forward_image_levels_per_s": round(c, 3),
           "time_ratio_engine_over_pure_forward": round(c / b, 3), f"d_{runtime.precision}_matmul_gflops": round(mm.gflops, 1),
           "gflop_per_image_all_models": round(flops / 1e9, 3)}
    print(f"together ({', '.join(names)}): (b) engine {b:.2f}; (c) pure forwards {c:.2f} image-levels/s "
          f"(an image-level: every model on one image); c/b = {c / b:.2f}; (d) {mm.gflops:.1f} GFLOP/s", flush=True)
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
    ap.add_argument("--together", action="store_true",
                    help="Also sweep all --models in one run (shared perturbation, letterbox and backbone), as `run` does.")
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
    d = matmul_gflops(runtime)  # the header's; each model's figures use their own (d), measured beside them
    info = hardware_info()
    print(f"CPU: {hardware(info)}; bf16 matmul on {bf16_matmul_units(info)}; runtime {runtime.describe()}; "
          f"profile {args.profile}"
          f"{' (torch.compile)' if args.compile else ''}; {len(positions)} images x {len(cells)} cells; "
          f"(d) {runtime.precision} matmul {d:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: measure(name, args, data, Path(tmp), runtime) for name in args.models.split(",")}
        together = measure_together(args.models.split(","), args, data, Path(tmp), runtime) if args.together else None
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(info),
        "hardware_info": info,
        "bf16_matmul_units": bf16_matmul_units(info),
        "torch": torch.__version__,
        "profile": args.profile,
        "test_images": len(positions),
        "cells": len(cells),
        "image_levels": data["image_levels"],
        "runtime": runtime.describe(),
        "compile": args.compile,
        f"d_{runtime.precision}_matmul_gflops": round(d, 1),
        "models": rows,
        "together": together,
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
