"""Per-cell cost of a sweep of every model, for the full-dataset estimate in docs/performance.md.

Untrained checkpoints of every registered model at a profile (``bench_checkpoints``: cost
does not depend on the weights), swept together by the one engine (``run_sweep``, local
backend) over N test images at one level of each of the seed's eight perturbations plus
the clean level, with T torch threads (T = 1 is what one ``--backend ray`` task with
``--cpus-per-task 1`` gets). Measured around the compute alone (``compute_cells``): wall
seconds and the process's CPU seconds per image-level of all models together (backbones
shared as in a real sweep), and the one-time load (models, backbones, test split) a
worker pays. The full sweep is 3,669 test images x 73 cells per model (clean + 8 x 9).

    python benchmarks/sweep_cell_cost.py --profile quick --images 20 --threads 1
    python benchmarks/sweep_cell_cost.py --profile paper --images 4 --threads 1 --backbone clip:ViT-B-32:none
    python benchmarks/sweep_cell_cost.py --profile paper --backbone clip:ViT-B-32:none --flops-only

``--flops-only``: each model's GFLOP per image (its forward and its backbone's, torch's
FLOP counter), the basis of the README's GPU extrapolation; no sweep.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_checkpoints import save_untrained  # noqa: E402
from petseg_bench.engine import sweep as sweep_mod  # noqa: E402
from petseg_bench.plugins import get_registry  # noqa: E402
from petseg_bench.provenance import hardware  # noqa: E402

SEED_EIGHT = ["gaussian_noise", "gaussian_blur", "contrast_increase", "contrast_decrease", "brightness_increase",
              "brightness_decrease", "occlusion", "salt_and_pepper"]
FULL_IMAGES, CELLS_PER_MODEL = 3669, 73


def timed_compute(clock: dict):
    """``compute_cells`` wrapped to record its wall and CPU seconds in ``clock``."""
    real = sweep_mod.compute_cells

    def compute(*args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        out = real(*args, **kwargs)
        clock.update(wall=time.perf_counter() - w, cpu=time.process_time() - c)
        return out

    return compute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--models", default="all")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--level", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backbone", default=None, help="Backbone key for the models that take one (e.g. clip:ViT-B-32:none).")
    ap.add_argument("--data-root", default=os.environ.get("PETSEG_DATA", "../shared/data/oxford-iiit-pet"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--flops-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = get_registry()
    models = reg.select("model", args.models)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            opts = {"backbone": args.backbone} if args.backbone and reg.get("model", m).backbone_option else {}
            save_untrained(Path(tmp) / "ckpt", m, args.profile, opts)
        if args.flops_only:
            return print_flops(models, Path(tmp) / "ckpt", args)
        plan = sweep_mod.SweepPlan(models, SEED_EIGHT, [args.level], batch_size=args.batch_size, limit=args.images)
        job = sweep_mod.SweepJob(plan=plan, checkpoints_dir=Path(tmp) / "ckpt", run_dir=Path(tmp) / "run", data_root=Path(args.data_root))
        clock: dict = {}
        sweep_mod.compute_cells = timed_compute(clock)
        t0 = time.perf_counter()
        record = sweep_mod.run_sweep(job, log=lambda m: None)
        total = time.perf_counter() - t0
    image_levels = args.images * (1 + len(SEED_EIGHT))  # per model; all models share each image-level
    row = {
        "profile": args.profile, "models": models, "backbone": args.backbone, "images": args.images,
        "threads": args.threads, "batch_size": args.batch_size, "runtime": record.runtime, "hardware": hardware(),
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "image_levels": image_levels,
        "wall_s_per_image_level": round(clock["wall"] / image_levels, 4),
        "cpu_s_per_image_level": round(clock["cpu"] / image_levels, 4),
        "load_s": round(total - clock["wall"], 1),
        "full_sweep_image_levels": FULL_IMAGES * CELLS_PER_MODEL,
        "full_sweep_cpu_hours": round(clock["cpu"] / image_levels * FULL_IMAGES * CELLS_PER_MODEL / 3600, 2),
        "full_sweep_wall_hours_at_these_threads": round(clock["wall"] / image_levels * FULL_IMAGES * CELLS_PER_MODEL
                                                        / 3600, 2),
    }
    print(json.dumps(row, indent=2))
    out = Path(args.out or Path(__file__).parent / "results" / f"sweep_cell_cost_{args.profile}_t{args.threads}.json")
    out.write_text(json.dumps(row, indent=2) + "\n")


def print_flops(models: list[str], ckpt: Path, args) -> None:
    from sweep_throughput import model_flops

    from petseg_bench.engine.predictor import load_predictor

    gflop = {m: round(model_flops(load_predictor(ckpt / m / "best.pt", expect_model=m)) / 1e9, 2) for m in models}
    row = {"profile": args.profile, "backbone": args.backbone, "gflop_per_image": gflop,
           "gflop_per_image_level_all_models": round(sum(gflop.values()), 1)}
    print(json.dumps(row, indent=2))
    out = Path(args.out or Path(__file__).parent / "results" / f"sweep_gflop_{args.profile}.json")
    out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
