"""Training images/s of U-Net: fp32 (contiguous) against bf16 autocast + channels_last.

Both variants run in the same process on the same random batches, so the printed ratio
is robust to the machine's background load. Profiles: quick (96 px, 16 channels) and
paper (256 px, 64 channels, batch 16; slow on a CPU: each step takes tens of seconds).

    python benchmarks/train_throughput.py [--profiles quick,paper] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from petseg_bench.config import resolve  # noqa: E402
from petseg_bench.engine.losses import segmentation_loss  # noqa: E402
from petseg_bench.engine.predictor import build_model  # noqa: E402
from petseg_bench.engine.runtime import Runtime  # noqa: E402
from petseg_bench.engine.train_loop import make_optimizer  # noqa: E402
from petseg_bench.plugins import get_registry  # noqa: E402
from petseg_bench.provenance import hardware  # noqa: E402


def images_per_s(profile: str, precision: str, channels_last: bool, steps: int, warmup: int = 1,
                 upsample: str = "bilinear") -> float:
    """Median images/s of U-Net training steps (forward, CE + Dice, backward, AdamW) on one
    random batch, with the profile's model config, batch size and optimiser. Built by the
    engine's ``build_model`` (channels_last), then put back in contiguous format when
    ``channels_last`` is off; autocast from the engine's ``Runtime``."""
    cfg, generic = resolve(profile, {}, {})
    spec = get_registry().get("model", "unet")
    config = spec.config(generic, {"upsample": upsample}, profile)
    runtime = Runtime.choose("cpu", precision)
    batch = cfg.batch_size
    model = build_model(spec, config, runtime, seed=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = make_optimizer(cfg, model.parameters())
    x = torch.randn(batch, 3, config.in_size, config.in_size).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (batch, config.in_size, config.in_size))
    w = torch.tensor(cfg.class_weights, dtype=torch.float32)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        with runtime.autocast():
            out = model(image=x)
        loss = segmentation_loss(out, y, w, spec.loss.ce, spec.loss.dice)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return batch / times[len(times) // 2]  # median step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="quick,paper")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(),
               "torch": torch.__version__, "steps": args.steps, "profiles": {}}
    for profile in args.profiles.split(","):
        # The seed's step: fp32, contiguous tensors, transposed-conv upsampling.
        seed = images_per_s(profile, "fp32", False, args.steps, upsample="transposed")
        fp32 = images_per_s(profile, "fp32", False, args.steps)
        bf16 = images_per_s(profile, "bf16", True, args.steps)
        results["profiles"][profile] = {
            "seed_style_fp32_transposed_images_per_s": round(seed, 3),
            "fp32_images_per_s": round(fp32, 3),
            "bf16_channels_last_images_per_s": round(bf16, 3),
            "bf16_over_fp32": round(bf16 / fp32, 3),
            "bf16_over_seed_style": round(bf16 / seed, 3),
        }
        print(f"{profile:6s} U-Net training: seed-style {seed:8.2f} img/s   fp32 {fp32:8.2f} img/s   "
              f"bf16+channels_last {bf16:8.2f} img/s   bf16/fp32 {bf16 / fp32:.2f}x   bf16/seed-style {bf16 / seed:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
