"""Peak memory (RSS) of a five-model sweep at the paper width, against a baseline.

Every built-in model is built at the paper setting (256 px, 64 base channels, CLIP
ViT-B-32 with random weights: throughput and memory do not depend on the values) and
saved as a checkpoint; then `petseg-bench run` sweeps them in a child process whose peak
RSS is read from the OS. The baseline, measured the same way in the same run, is a
child that only loads the five models. The checkpoints are built in a child too: Linux
carries a parent's peak RSS into a child's (at exec), so this process never imports torch. Memory is set by the models plus one batch in
flight, since finished cells go straight to disk; a few cells at the default batch size
reach the peak of a full sweep.

    python benchmarks/sweep_memory.py [--images 32] [--batch-size 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TARGET_GB = 4.0
MODELS = ["unet", "autoencoder", "clip_only", "clip_unet", "point_clip_unet"]

#: The frozen backbone of every model that has one: random weights, same memory as openai's.
BACKBONE = "clip:ViT-B-32:none"

MAKE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from sweep_memory import make_checkpoints
make_checkpoints(Path(sys.argv[1]))
"""

LOAD_ONLY = """
import sys
from pathlib import Path
from petseg_bench.engine.predictor import load_predictor
for m in sys.argv[2:]:
    load_predictor(Path(sys.argv[1]) / m / "best.pt", expect_model=m)
"""


def make_checkpoints(folder: Path) -> None:
    """Every model at the paper profile (256 px, 64 base channels), untrained; the models
    on a frozen backbone get ``BACKBONE``. Run in a child (``MAKE``), never in main's process."""
    from bench_checkpoints import save_untrained  # benchmarks/, beside this script
    from petseg_bench.plugins import get_registry

    reg = get_registry()
    for m in MODELS:
        spec = reg.get("model", m)
        options = {spec.backbone_option: BACKBONE} if spec.backbone_option else {}
        save_untrained(folder, m, "paper", options)


def child_peak_gb(cmd: list[str]) -> float:
    """Peak RSS of one child process, in GB: its own rusage from wait4 (ru_maxrss is in
    KiB on Linux), so children may run in any order."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return usage.ru_maxrss * 1024 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-root", default=os.environ.get("PETSEG_DATA", "../shared/data/oxford-iiit-pet"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sweep_memory.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-c", MAKE, str(tmp / "ckpt"), str(Path(__file__).resolve().parent)],
                       check=True)
        base = child_peak_gb([sys.executable, "-c", LOAD_ONLY, str(tmp / "ckpt"), *MODELS])
        peak = child_peak_gb([sys.executable, "-m", "petseg_bench.cli", "run", "--models", ",".join(MODELS),
                              "--perturbations", "gaussian_noise,salt_and_pepper", "--levels", "9",
                              "--checkpoints", str(tmp / "ckpt"), "--out", str(tmp / "run"),
                              "--data-root", args.data_root, "--limit", str(args.images),
                              "--batch-size", str(args.batch_size), "--no-report"])
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": MODELS, "width": f"256 px, 64 base channels, backbone {BACKBONE} (random init)",
        "images": args.images, "batch_size": args.batch_size,
        "baseline_load_only_peak_rss_gb": round(base, 3),
        "sweep_peak_rss_gb": round(peak, 3),
        "sweep_over_baseline": round(peak / base, 3),
        "sweep_over_target_4gb": round(peak / TARGET_GB, 3),
    }
    print(f"five models loaded: {base:.2f} GB peak RSS; five-model sweep (batch {args.batch_size}): "
          f"{peak:.2f} GB = {peak / base:.2f}x the load-only baseline, {peak / TARGET_GB:.0%} of the {TARGET_GB:g} GB target")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
