"""Training images/s of any registered model: fp32 (contiguous) against bf16 autocast + channels_last.

Every variant runs in the same process on the same random batches, taking turns step by
step, so the printed ratio is robust to the machine's background load. Each model is configured as ``petseg-bench
train MODEL --profile P`` configures it (``benchmarks/bench_checkpoints.profile_config``:
the profile, then the spec's own per-profile fields and options). A step is the training
loop's (``TrainLoop.forward_loss`` and ``step``): uint8 batch -> ``engine.inputs.model_inputs``
(normalisation, the click, the frozen backbone's features, computed every step as
training does) -> forward -> the spec's CE + Dice weights -> backward -> the profile's
optimiser over ``param_groups`` (the spec's learning-rate scales). A model with several
phases (an autoencoder's reconstruction pretraining) is measured in its last phase,
segmentation. Profiles: quick (96 px), reference (160 px, models may set their own size),
paper (256 px, 64 channels; slow on a CPU: each step takes tens of seconds).

Seed-style (fp32, contiguous, ``upsample=transposed``, the seed's step) is measured for
models with a transposed-upsampling option unless ``--skip-seed-style``.

    python benchmarks/train_throughput.py [--models unet] [--profiles quick,paper] [--steps 3]
    python benchmarks/train_throughput.py --models unet,effnet_unet,clip_unet,point_clip_unet,clip_only,autoencoder \\
        --profiles reference --steps 3 --skip-seed-style --out benchmarks/results/train_throughput_reference.json
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

from bench_checkpoints import profile_config  # noqa: E402  (benchmarks/, beside this script)
from petseg_bench.backbones import FeatureCache  # noqa: E402
from petseg_bench.engine.inputs import model_inputs  # noqa: E402
from petseg_bench.engine.losses import segmentation_loss  # noqa: E402
from petseg_bench.engine.predictor import attach_backbone, build_model  # noqa: E402
from petseg_bench.engine.runtime import Runtime  # noqa: E402
from petseg_bench.engine.train_loop import make_optimizer, param_groups  # noqa: E402
from petseg_bench.provenance import hardware  # noqa: E402


def make_step(model_name: str, profile: str, precision: str, channels_last: bool,
              options: dict | None = None):
    """(one training step as a function, its batch size, what is measured) for
    ``model_name`` at ``profile``. Built by the engine's ``build_model`` (channels_last),
    put back in contiguous format when ``channels_last`` is off; autocast from the
    engine's ``Runtime``."""
    spec, cfg, config = profile_config(model_name, profile, options)
    runtime = Runtime.choose("cpu", precision)
    batch, size = cfg.batch_size, config.in_size
    model = build_model(spec, config, runtime, seed=0)
    backbone = attach_backbone(spec, config)
    if len(spec.phases) > 1:  # as TrainLoop.start_phase: the segmentation phase is the last
        model.set_phase(spec.phases[-1].name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = make_optimizer(cfg, param_groups(model, spec.lr_scales, cfg.lr))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    points = torch.randint(size // 4, 3 * size // 4, (batch, 2), generator=gen)
    y = torch.randint(0, 3, (batch, size, size), generator=gen)
    w = torch.tensor(cfg.class_weights, dtype=torch.float32)
    ce = spec.loss.ce if cfg.ce_weight is None else cfg.ce_weight
    dice = spec.loss.dice if cfg.dice_weight is None else cfg.dice_weight

    def step() -> float:
        t0 = time.perf_counter()
        inputs = model_inputs(spec, images, points, backbone, FeatureCache(), runtime.autocast)
        inputs["image"] = inputs["image"].contiguous(memory_format=fmt)
        with runtime.autocast():
            out = model(**inputs)
        loss = segmentation_loss(out, y, w, ce, dice)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    what = {"in_size": size, "base_channels": config.base_channels, "batch_size": batch,
            "backbone": spec.backbone_key(config), "phase": spec.phases[-1].name}
    return step, batch, what


def images_per_s(steps_of: dict, steps: int, warmup: int = 1) -> dict:
    """Median images/s of each variant's training steps. The variants take turns, one
    step each per round, so a background load that changes over time hits them alike."""
    times: dict = {k: [] for k in steps_of}
    for r in range(warmup + steps):
        for k, (step, _) in steps_of.items():
            t = step()
            if r >= warmup:
                times[k].append(t)
    return {k: steps_of[k][1] / sorted(ts)[len(ts) // 2] for k, ts in times.items()}


def has_seed_style(model_name: str) -> bool:
    spec, _, _ = profile_config(model_name, "quick")
    opt = next((o for o in spec.options if o.name == "upsample"), None)
    return opt is not None and "transposed" in (opt.choices or ())


def measure(model_name: str, profile: str, steps: int, seed_style: bool) -> dict:
    """The figures of one model at one profile, every variant in this process."""
    fp32_step, batch, what = make_step(model_name, profile, "fp32", False)
    variants = {"fp32": (fp32_step, batch), "bf16": make_step(model_name, profile, "bf16", True)[:2]}
    if seed_style:
        variants["seed"] = make_step(model_name, profile, "fp32", False, {"upsample": "transposed"})[:2]
    rate = images_per_s(variants, steps)
    fp32, bf16, seed = rate["fp32"], rate["bf16"], rate.get("seed")
    row = {**what, "fp32_images_per_s": round(fp32, 3), "bf16_channels_last_images_per_s": round(bf16, 3),
           "bf16_over_fp32": round(bf16 / fp32, 3)}
    if seed is not None:
        row.update(seed_style_fp32_transposed_images_per_s=round(seed, 3), bf16_over_seed_style=round(bf16 / seed, 3))
    line = (f"{profile:9s} {model_name:16s} {what['in_size']:3d} px  fp32 {fp32:8.2f} img/s   "
            f"bf16+channels_last {bf16:8.2f} img/s   bf16/fp32 {bf16 / fp32:.2f}x")
    if seed is not None:
        line += f"   seed-style {seed:8.2f} img/s   bf16/seed-style {bf16 / seed:.2f}x"
    print(line, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="unet", help="Registered model names, comma-separated.")
    ap.add_argument("--profiles", default="quick,paper")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-seed-style", action="store_true", help="Only fp32 and bf16 + channels_last.")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(),
               "torch": torch.__version__, "steps": args.steps, "profiles": {}}
    print(f"CPU: {results['hardware']}")
    for profile in args.profiles.split(","):
        rows = results["profiles"].setdefault(profile, {})
        for name in args.models.split(","):
            rows[name] = measure(name, profile, args.steps, not args.skip_seed_style and has_seed_style(name))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
