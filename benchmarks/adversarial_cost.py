"""Cost of the adversarial attacks against the clean forward, in image-levels per second.

Loads the given checkpoints, letterboxes N test images once, then times per model the
clean forward (``Predictor.logits``) and each attack at one budget through the engine's
attack path (:func:`petseg_bench.engine.attack.attacked_logits`: the attack in fp32,
then the scoring forward), in the same process, one after another. An attack costs
about (steps + 1) forward and backward passes per image (PGD and SegPGD: 10 steps; FGSM
one; the random-sign baseline none), plus the scoring forward.

    python benchmarks/adversarial_cost.py --checkpoints CKPTS --data-root DATA --models unet --images 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from petseg_bench.data.cache import prepare
from petseg_bench.engine.attack import attacked_logits
from petseg_bench.engine.predictor import letterbox_batch, load_predictor
from petseg_bench.engine.runtime import Runtime
from petseg_bench_perturbations.adversarial import ATTACKS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--models", default="unet")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--eps", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = prepare(args.data_root, "test", "ignore", None)
    n = min(args.images, len(test))
    images, labels = [test.image(i) for i in range(n)], [test.label(i) for i in range(n)]
    ids = [test.names[i] for i in range(n)]
    rt = Runtime.choose("cpu", args.precision)
    for model in args.models.split(","):
        pr = load_predictor(args.checkpoints / model / "best.pt", rt)
        batch, boxes, points = letterbox_batch(images, pr.config.in_size, labels if pr.needs_clicks else None)
        pr.logits(batch, points)  # warm-up
        t = time.perf_counter()
        pr.logits(batch, points)
        clean = n / (time.perf_counter() - t)
        row = [f"clean {clean:.1f}"]
        for name, (fn, _) in ATTACKS.items():
            t = time.perf_counter()
            attacked_logits(fn, name, args.eps, 1, 0, model, pr, batch, boxes, points, labels, ids)
            rate = n / (time.perf_counter() - t)
            row.append(f"{name} {rate:.1f} ({clean / rate:.1f}x)")
        print(f"{model} ({pr.config.in_size} px, {rt.describe()}), image-levels/s: " + "; ".join(row))


if __name__ == "__main__":
    main()
