"""Training images/s of any registered model against a bound, and the speed levers on and off.

Every variant runs in the same process on the same random batches, taking turns step by
step, so the printed ratios are robust to the machine's background load. Each model is
configured as ``petseg-bench train MODEL --profile P`` configures it
(``benchmarks/bench_checkpoints.profile_config``: the profile, then the spec's own
per-profile fields and options). A step is the training loop's (``TrainLoop.forward_loss``
and ``step``): uint8 batch -> ``engine.inputs.model_inputs`` (normalisation, the click,
the frozen backbone's features, computed every step as training does) -> forward -> the
spec's CE + Dice weights -> backward -> gradient clipping -> the profile's optimiser over
``param_groups`` (``make_optimizer``, the engine's ``optimizer_impl``). A model with
several phases (an autoencoder's reconstruction pretraining) is measured in its last
phase, segmentation. Profiles: quick (96 px), reference (160 px, models may set their own
size), paper (256 px, 64 channels; slow on a CPU: each step takes tens of seconds).

The bound: the step's forward + backward FLOPs (``torch.utils.flop_counter``, 2 per
multiply-add, the frozen backbone's forward included) times img/s, over a bf16 2048^3
matmul's rate measured between the rounds of the same run (``sweep_throughput.Matmul``):
``% of d``.

Variants: ``fp32`` (contiguous), ``bf16`` (autocast + channels_last + the engine's
default optimiser step: what ``train`` runs), and each lever of ``--levers`` changed alone
from ``bf16``: ``loop`` (the per-parameter optimiser step, torch's CPU default before
foreach), ``fused`` (``--optimizer-impl fused``), ``compile`` (``--compile``: its first
steps compile, or load the kernels from the cache a previous run left), ``contiguous``
(no channels_last). ``--layout`` prints where the bf16 step leaves channels_last and what
its layout copies cost (torch.profiler, one step); ``--data-root`` times the real data
pipeline (the profile's augmentation, DataLoader with the profile's workers) beside the
bf16 step: time waiting for the next batch against time computing. Seed-style (fp32,
contiguous, ``upsample=transposed``, the loop optimiser step) for models with a
transposed-upsampling option unless ``--skip-seed-style``.

    python benchmarks/train_throughput.py [--models unet] [--profiles quick,paper] [--steps 3]
    python benchmarks/train_throughput.py --models unet,effnet_unet,clip_unet,point_clip_unet,clip_only,autoencoder \\
        --profiles reference --steps 5 --skip-seed-style --layout --data-root ../shared/data/oxford-iiit-pet \\
        --out benchmarks/results/train_throughput_reference_levers.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from bench_checkpoints import profile_config  # noqa: E402  (benchmarks/, beside this script)
from sweep_throughput import Matmul  # noqa: E402
from petseg_bench.backbones import FeatureCache  # noqa: E402
from petseg_bench.engine.inputs import model_inputs  # noqa: E402
from petseg_bench.engine.losses import segmentation_loss  # noqa: E402
from petseg_bench.engine.predictor import attach_backbone, build_model  # noqa: E402
from petseg_bench.engine.runtime import Runtime, compile_cache_dir, compiled  # noqa: E402
from petseg_bench.engine.train_loop import make_optimizer, param_groups  # noqa: E402
from petseg_bench.provenance import bf16_matmul_units, hardware, hardware_info  # noqa: E402

LEVERS = ("loop", "fused", "compile", "contiguous")
#: Trainval images a reference epoch trains on (3680 x 0.9): for the compile's break-even epoch.
EPOCH_IMAGES = 3312


class Step:
    """One training step of ``model_name`` at ``profile`` as the loop takes it, in one
    variant (precision, layout, optimiser step, compile); ``batch`` replaces the random one."""

    def __init__(self, model_name: str, profile: str, precision: str, channels_last: bool = True,
                 options: dict | None = None, *, optimizer_impl: str | None = None, compile_model: bool = False):
        spec, cfg, config = profile_config(model_name, profile, options)
        if optimizer_impl is not None:
            cfg.optimizer_impl = optimizer_impl
        cfg.validate()
        self.spec, self.cfg, self.config = spec, cfg, config
        self.runtime = Runtime.choose("cpu", precision)
        self.batch, size = cfg.batch_size, config.in_size
        model = build_model(spec, config, self.runtime, seed=0)
        self.backbone = attach_backbone(spec, config)
        if len(spec.phases) > 1:  # as TrainLoop.start_phase: the segmentation phase is the last
            model.set_phase(spec.phases[-1].name)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.fmt).train()
        self.forward = compiled(self.model) if compile_model else self.model
        self.opt = make_optimizer(cfg, param_groups(self.model, spec.lr_scales, cfg.lr))
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (self.batch, 3, size, size), dtype=torch.uint8, generator=gen)
        self.points = torch.randint(size // 4, 3 * size // 4, (self.batch, 2), generator=gen)
        self.y = torch.randint(0, 3, (self.batch, size, size), generator=gen)
        self.w = torch.tensor(cfg.class_weights, dtype=torch.float32)
        self.ce, self.dice = cfg.loss_weights(spec)
        self.what = {"in_size": size, "base_channels": config.options.get("base_channels"), "batch_size": self.batch,
                     "backbone": spec.backbone_key(config), "phase": spec.phases[-1].name}

    def __call__(self, batch: dict | None = None) -> float:
        images, points, y = (self.images, self.points, self.y) if batch is None else \
            (batch["image"], batch["point"], batch["label"])
        t0 = time.perf_counter()
        inputs = model_inputs(self.spec, images, points, self.backbone, FeatureCache(), self.runtime.autocast)
        inputs["image"] = inputs["image"].contiguous(memory_format=self.fmt)
        with self.runtime.autocast():
            out = self.forward(**inputs)
        loss = segmentation_loss(out, y, self.w, self.ce, self.dice)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.grad_clip,
                                           foreach=self.cfg.optimizer_impl != "loop")
        self.opt.step()
        return time.perf_counter() - t0

    def flops(self) -> float:
        """FLOPs of one step's forward and backward (and the frozen backbone's forward), per image."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop}) as counter:
            self()
        return counter.get_total_flops() / self.batch


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **_kw) -> int:
    """A convolution's backward: its forward's FLOPs once for the input's gradient and once
    for the weight's. torch 2.14's own formula ignores ``groups`` and counts a depthwise
    convolution's backward ``groups`` times over (64x for 64 channels), which would put
    the EfficientNet models far above the matmul rate."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def variants(model_name: str, profile: str, levers: list[str], seed_style: bool) -> dict[str, Step]:
    out = {"fp32": Step(model_name, profile, "fp32", False), "bf16": Step(model_name, profile, "bf16")}
    for lever in levers:
        out[lever] = Step(model_name, profile, "bf16", lever != "contiguous",
                          optimizer_impl=lever if lever in ("loop", "fused") else None,
                          compile_model=lever == "compile")
    if seed_style:
        out["seed"] = Step(model_name, profile, "fp32", False, {"upsample": "transposed"}, optimizer_impl="loop")
    return out


def timed_rounds(steps_of: dict[str, Step], steps: int, mm: Matmul, warmup: int = 2) -> tuple[dict, dict]:
    """(median seconds per step, the warm-up steps' seconds) of each variant. The variants
    take turns, one step each per round, and a burst of matmuls follows every round, so a
    background load that changes over time hits them and the bound alike."""
    times: dict = {k: [] for k in steps_of}
    first: dict = {k: [] for k in steps_of}
    for r in range(warmup + steps):
        for k, step in steps_of.items():
            (times if r >= warmup else first)[k].append(step())
        if r >= warmup:
            mm.burst(3)
    return {k: sorted(ts)[len(ts) // 2] for k, ts in times.items()}, first


def measure(model_name: str, profile: str, steps: int, levers: list[str], seed_style: bool, mm: Matmul) -> dict:
    """The figures of one model at one profile, every variant in this process."""
    steps_of = variants(model_name, profile, levers, seed_style)
    base = steps_of["bf16"]
    flop = base.flops()
    mm.flop = mm.seconds = 0.0
    median, first = timed_rounds(steps_of, steps, mm)
    d = mm.gflops
    rate = {k: steps_of[k].batch / t for k, t in median.items()}
    row = {**base.what, "gflop_per_image_fwd_bwd": round(flop / 1e9, 3), "d_bf16_matmul_gflops": round(d, 1),
           "images_per_s": {k: round(v, 3) for k, v in rate.items()},
           "fraction_of_matmul_rate": {k: round(v * flop / 1e9 / d, 3) for k, v in rate.items()},
           "over_bf16": {k: round(v / rate["bf16"], 3) for k, v in rate.items()}}
    line = (f"{profile:9s} {model_name:16s} {base.what['in_size']:3d} px  {flop / 1e9:6.2f} GFLOP/img fwd+bwd  "
            f"d {d:6.1f} GFLOP/s  fp32 {rate['fp32']:7.2f} img/s  bf16 {rate['bf16']:7.2f} img/s "
            f"= {rate['bf16'] * flop / 1e9 / d:.0%} of d  bf16/fp32 {rate['bf16'] / rate['fp32']:.2f}x")
    for k in [*levers, *(["seed"] if seed_style else [])]:
        line += f"\n{'':27s}{k:10s} {rate[k]:7.2f} img/s = {rate[k] * flop / 1e9 / d:.0%} of d, {rate[k] / rate['bf16']:.3f}x bf16"
    if "compile" in levers:
        row["compile"] = compile_cost(first["compile"], median["compile"], median["bf16"], base.batch)
        c = row["compile"]
        line += (f"\n{'':27s}compile: first steps {', '.join(f'{t:.1f}' for t in first['compile'])} s; "
                 f"cost {c['compile_s']:.1f} s; break-even after {c['break_even_steps']} steps "
                 f"= {c['break_even_epochs']} reference epochs ({EPOCH_IMAGES} images)")
    print(line, flush=True)
    return row


def compile_cost(first: list[float], compiled_s: float, eager_s: float, batch: int) -> dict:
    """The compile's one-off cost (its warm-up steps beyond as many compiled steps) and
    after how many steps / reference epochs the faster steps have paid it back."""
    cost = sum(first) - len(first) * compiled_s
    saved = eager_s - compiled_s
    steps = None if saved <= 0 else int(cost / saved) + 1
    from torch._dynamo.utils import counters

    return {"warmup_step_s": [round(t, 2) for t in first], "compile_s": round(cost, 2),
            "step_s_eager": round(eager_s, 4), "step_s_compiled": round(compiled_s, 4), "break_even_steps": steps,
            "break_even_epochs": None if steps is None else round(steps / (EPOCH_IMAGES // batch), 3),
            "cache_dir": str(compile_cache_dir()),
            "cache": {k: v for k, v in {**counters["inductor"], **counters["aot_autograd"]}.items() if "cache" in k}}


def layout(model_name: str, profile: str) -> dict:
    """Where the bf16 + channels_last step's modules give 4-D outputs that are not
    channels_last, and what the step's layout copies cost (torch.profiler, one step)."""
    step = Step(model_name, profile, "bf16")
    step()  # warm-up
    seen: Counter = Counter()
    plain: list[str] = []

    def hook(name):
        def record(_module, _args, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] > 1 and out.shape[2] * out.shape[3] > 1:
                cl = out.is_contiguous(memory_format=torch.channels_last)
                seen["channels_last" if cl else "other"] += 1
                if not cl:
                    plain.append(f"{name} ({type(_module).__name__})")
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in step.model.named_modules() if not list(m.children())]
    step()
    for h in handles:
        h.remove()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    copies: Counter = Counter()  # aten::copy_ by what asked for it: a dtype cast (autocast) or a layout change
    for e in prof.events():
        if e.name == "aten::copy_":
            parent = e.cpu_parent.name if e.cpu_parent is not None else "(top level)"
            copies[parent] += e.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    out = {"leaf_outputs_4d": dict(seen), "not_channels_last": plain[:20], "n_not_channels_last": len(plain),
           "copy_share_of_step": round(sum(copies.values()) / total, 4),
           "copy_share_by_caller": {k: round(v / total, 4) for k, v in copies.most_common()},
           "top_ops": {e.key: round(e.self_cpu_time_total / total, 4) for e in top}}
    print(f"{'':27s}layout: {seen['channels_last']} leaf 4-D outputs channels_last, {len(plain)} not"
          f"{' (' + ', '.join(plain[:4]) + (', ...' if len(plain) > 4 else '') + ')' if plain else ''}; "
          f"copy_ {out['copy_share_of_step']:.1%} of the step (by caller: "
          + ", ".join(f"{k} {v:.1%}" for k, v in list(out["copy_share_by_caller"].items())[:4]) + "); top ops "
          + ", ".join(f"{k} {v:.1%}" for k, v in list(out["top_ops"].items())[:5]), flush=True)
    return out


def data_pipeline(model_name: str, profile: str, data_root: Path, batches: int) -> dict:
    """The real training data (the profile's augmentation, clicks, workers) feeding the bf16
    step: seconds waiting for each batch against seconds computing it, and the loader alone."""
    from torch.utils.data import DataLoader

    from petseg_bench.data.cache import prepare
    from petseg_bench.data.datasets import LetterboxedSet
    from petseg_bench.data.split import validation_split
    from petseg_bench.engine.distributed import EpochBatches

    step = Step(model_name, profile, "bf16")
    cfg = step.cfg
    prepared = prepare(data_root, "trainval", cfg.void, None, progress=False)
    train_pos, _ = validation_split(prepared.species, cfg.val_fraction, cfg.seed)
    data = LetterboxedSet(prepared, train_pos, step.config.in_size, augment=cfg.augment, clicks="train", seed=cfg.seed)

    def loader():
        return DataLoader(data, batch_sampler=EpochBatches(len(data), cfg.batch_size, 1, True),
                          num_workers=cfg.workers)

    wait, compute, t = [], [], time.perf_counter()
    for k, batch in enumerate(loader()):
        waited = time.perf_counter() - t
        spent = step(batch)
        if k > 0:  # the first batch also starts the workers
            wait.append(waited)
            compute.append(spent)
        t = time.perf_counter()
        if k >= batches:
            break
    t0, n = time.perf_counter(), 0
    for k, batch in enumerate(loader()):
        n += len(batch["label"]) if k > 0 else 0
        t0 = time.perf_counter() if k == 0 else t0
        if k >= batches:
            break
    alone = n / (time.perf_counter() - t0)
    out = {"workers": cfg.workers, "augment": cfg.augment, "batches": len(wait),
           "wait_s_per_batch": round(sum(wait) / len(wait), 4), "compute_s_per_batch": round(sum(compute) / len(compute), 4),
           "wait_share": round(sum(wait) / (sum(wait) + sum(compute)), 3), "loader_alone_images_per_s": round(alone, 2)}
    print(f"{'':27s}data: {out['wait_s_per_batch'] * 1e3:.0f} ms waiting + {out['compute_s_per_batch'] * 1e3:.0f} ms "
          f"computing per batch ({out['wait_share']:.0%} waiting; {cfg.workers} worker(s), augment {cfg.augment}); "
          f"the loader alone {alone:.1f} img/s", flush=True)
    return out


def has_seed_style(model_name: str) -> bool:
    spec, _, _ = profile_config(model_name, "quick")
    opt = next((o for o in spec.options if o.name == "upsample"), None)
    return opt is not None and "transposed" in (opt.choices or ())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="unet", help="Registered model names, comma-separated.")
    ap.add_argument("--profiles", default="quick,paper")
    ap.add_argument("--steps", type=int, default=3, help="Timed steps per variant (after 2 warm-up steps).")
    ap.add_argument("--levers", default=",".join(LEVERS), help=f"Comma-separated, of {', '.join(LEVERS)}; 'none'.")
    ap.add_argument("--skip-seed-style", action="store_true", help="No seed-style variant.")
    ap.add_argument("--layout", action="store_true", help="Channels_last coverage and layout copies of one bf16 step.")
    ap.add_argument("--data-root", type=Path, default=None, help="Also time the real data pipeline beside the step.")
    ap.add_argument("--data-batches", type=int, default=12, help="Batches of the data-pipeline measurement.")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    levers = [] if args.levers == "none" else args.levers.split(",")
    unknown = set(levers) - set(LEVERS)
    if unknown:
        ap.error(f"--levers: unknown {', '.join(sorted(unknown))} (known: {', '.join(LEVERS)})")
    torch.manual_seed(0)
    info = hardware_info()
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(info),
               "hardware_info": info, "bf16_matmul_units": bf16_matmul_units(info), "torch": torch.__version__,
               "steps": args.steps, "levers": levers, "compile_cache_dir": str(compile_cache_dir()), "profiles": {}}
    mm = Matmul(Runtime.choose("cpu", "bf16"))
    print(f"CPU: {results['hardware']}; bf16 matmul on {results['bf16_matmul_units']}; torch {torch.__version__}; "
          f"compile cache {results['compile_cache_dir']}", flush=True)
    for profile in args.profiles.split(","):
        rows = results["profiles"].setdefault(profile, {})
        for name in args.models.split(","):
            row = measure(name, profile, args.steps, levers, not args.skip_seed_style and has_seed_style(name), mm)
            if args.layout:
                row["layout"] = layout(name, profile)
            if args.data_root is not None:
                row["data"] = data_pipeline(name, profile, args.data_root, args.data_batches)
            rows[name] = row
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
