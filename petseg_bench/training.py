"""The one training loop, for every model (built-in or third-party).

A model's spec says which inputs it needs, its loss weights and its phases; the loop
does the rest: seeded split and augmentation, optimiser and warm-restart cosine
schedule, bf16 autocast and channels_last, gradient clipping, validation mIoU at the
original mask resolution, best/last checkpoints written atomically, early stopping,
exact resume, per-epoch metrics in JSONL.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import checkpoint
from .config import TrainConfig
from .data.cache import PreparedSplit, prepare
from .data.datasets import LetterboxedSet, sample_seed
from .data.split import limit, validation_split
from .errors import PetsegError
from .inference import Predictor, confusion_over
from .inputs import EVAL_CLICK_RULE, model_inputs
from .losses import reconstruction_loss, segmentation_loss
from .metrics import dice, iou, mean_over_classes, reduce
from .plugins import get_registry
from .provenance import code_version
from .runtime import Runtime
from .specs import MetricSpec, ModelConfig, ModelSpec

_IOU = MetricSpec("iou", iou, per_class=True)
_DICE = MetricSpec("dice", dice, per_class=True)


@dataclass
class TrainResult:
    model: str
    best_path: Path
    last_path: Path
    best_val_miou: float
    baseline_val_miou: float  # all-background prediction on the same validation images
    epochs_run: int
    images_per_s: float
    history: list[dict] = field(default_factory=list)


def phase_epochs(total: int, fractions: list[float]) -> list[int]:
    """Split the epoch budget over phases by their fractions, each phase at least one epoch."""
    weights = np.asarray(fractions, dtype=float)
    counts = np.maximum(1, np.floor(total * weights / weights.sum()).astype(int))
    counts[-1] = max(1, total - counts[:-1].sum())  # the last (segmentation) phase takes the rest
    return counts.tolist()


def build_model(spec: ModelSpec, config: ModelConfig, runtime: Runtime, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = spec.build(config)
    return model.to(runtime.device, memory_format=torch.channels_last)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights to store: everything but a frozen CLIP backbone, which is rebuilt from its
    source (tag, file or seeded random init) recorded in the model config."""
    skip = ("clip.",) if hasattr(model, "clip_key") else ()
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("clip.")]
    if missing or result.unexpected_keys:
        bad = (missing + list(result.unexpected_keys))[:4]
        raise PetsegError(f"checkpoint {path} does not fit the model: mismatched weights {', '.join(bad)}")


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.scheduler == "none":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.restart_epochs, eta_min=cfg.lr * 0.01)


def load_model(path: Path, runtime: Runtime | None = None, expect_model: str | None = None):
    """(spec, config, model, checkpoint dict) from a checkpoint file, ready for inference."""
    data = checkpoint.load(path, expect_model)
    reg = get_registry()
    spec = reg.get("model", data["model"])
    config = ModelConfig.from_dict(data["model_config"])
    runtime = runtime or Runtime.choose()
    model = spec.build(config)
    load_weights(model, data["state_dict"], Path(path))
    model = model.to(runtime.device, memory_format=torch.channels_last).eval()
    return spec, config, model, data


#: Settings that do not change what is computed, so a resume may change them.
RESUME_FREE = {"workers", "device"}


def _config_diff(saved: dict, now: dict) -> list[str]:
    keys = sorted((set(saved) | set(now)) - RESUME_FREE)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def train(model_name: str, cfg: TrainConfig, model_overrides: dict[str, Any], data_root: Path,
          out_dir: Path, *, resume: bool = False, cache_dir: Path | None = None, progress: bool = False,
          log: Callable[[str], None] = print, on_epoch_end: Callable[[int], None] | None = None,
          wandb: bool = False) -> TrainResult:
    cfg.validate()
    reg = get_registry()
    spec = reg.get("model", model_name)
    mcfg = spec.config(**model_overrides)
    mcfg.validate()
    runtime = Runtime.choose(cfg.device, cfg.precision)
    torch.set_float32_matmul_precision("high")

    prepared = prepare(data_root, "trainval", cfg.void, cache_dir, progress=progress)
    if len(prepared) < 2:
        raise PetsegError(f"trainval split at {data_root} has {len(prepared)} usable images; need at least 2")
    train_pos, val_pos = validation_split(prepared.species, cfg.val_fraction, cfg.seed)
    train_pos, val_pos = limit(train_pos, cfg.limit, cfg.seed), limit(val_pos, cfg.val_limit, cfg.seed)

    run_dir = Path(out_dir) / model_name
    run_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path, log_path = run_dir / "best.pt", run_dir / "last.pt", run_dir / "metrics.jsonl"
    meta = {
        "model": model_name,
        "model_config": mcfg.to_dict(),
        "train_config": cfg.to_dict(),
        "data_fingerprint": prepared.fingerprint,
        "n_train": int(len(train_pos)),
        "n_val": int(len(val_pos)),
        "code_version": code_version(),
        "runtime": runtime.describe(),
        "clip": ({"model": mcfg.clip_model, "pretrained": mcfg.clip_pretrained} if spec.uses_clip else None),
        "eval_click_rule": EVAL_CLICK_RULE if "point" in spec.inputs else None,
    }

    model = build_model(spec, mcfg, runtime, cfg.seed)
    phases = list(spec.phases)
    budget = phase_epochs(cfg.epochs, [p.epochs_fraction for p in phases])
    total_epochs = sum(budget)
    if total_epochs != cfg.epochs:
        log(f"{model_name}: {len(phases)} training phases need at least one epoch each; running {total_epochs} epochs, not {cfg.epochs}")
    state = {"epoch": 0, "phase": 0, "epoch_in_phase": 0, "best": -1.0, "bad_epochs": 0, "history": [], "done": False}
    resumed_opt = None
    if resume and last_path.is_file():
        saved = checkpoint.load(last_path, expect_model=model_name)
        for key in ("model_config", "train_config"):
            diff = _config_diff(saved[key], meta[key])
            if diff:
                raise PetsegError(f"--resume: {last_path} was trained with a different {key.replace('_', ' ')} ({'; '.join(diff[:3])})")
        if saved["data_fingerprint"] != meta["data_fingerprint"]:
            raise PetsegError(f"--resume: {last_path} was trained on other data (fingerprint {saved['data_fingerprint']} != {meta['data_fingerprint']})")
        load_weights(model, saved["state_dict"], last_path)
        state.update(saved["loop"])
        resumed_opt = (saved.get("optimizer"), saved.get("scheduler"))
        torch.set_rng_state(saved["rng"])
        log(f"{model_name}: resuming after epoch {state['epoch']}")
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log

    if state["done"]:
        log(f"{model_name}: already finished ({state['epoch']} epochs); nothing to do")

    train_set = LetterboxedSet(prepared, train_pos, mcfg.in_size, augment=True, clicks="train", seed=cfg.seed)
    predictor = Predictor(model, spec, mcfg, runtime)
    class_weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=runtime.device)
    ce_w = spec.loss.ce if cfg.ce_weight is None else cfg.ce_weight
    dice_w = spec.loss.dice if cfg.dice_weight is None else cfg.dice_weight
    baseline = _all_background_miou(prepared, val_pos)
    run = _wandb_run(wandb, model_name, meta) if wandb else None
    images_per_s = []

    while not state["done"] and state["phase"] < len(phases):
        phase = phases[state["phase"]]
        if len(phases) > 1:
            model.set_phase(phase.name)
        opt = make_optimizer(cfg, model.parameters())
        sched = make_scheduler(cfg, opt)
        if resumed_opt is not None:
            if resumed_opt[0]:
                opt.load_state_dict(resumed_opt[0])
            if sched is not None and resumed_opt[1]:
                sched.load_state_dict(resumed_opt[1])
            resumed_opt = None
        while state["epoch_in_phase"] < budget[state["phase"]]:
            epoch = state["epoch"]
            t0 = time.perf_counter()
            train_loss, seen = _train_epoch(model, spec, mcfg, cfg, phase.loss, train_set, opt, sched, runtime,
                                            class_weights, ce_w, dice_w, epoch, progress, model_name, last_path)
            seconds = time.perf_counter() - t0
            images_per_s.append(seen / seconds)
            row = {"epoch": epoch + 1, "phase": phase.name, "train_loss": round(train_loss, 6),
                   "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 2),
                   "images_per_s": round(seen / seconds, 2)}
            improved = False
            if phase.loss == "segmentation":
                cms = confusion_over(predictor, prepared, val_pos, batch_size=cfg.batch_size)
                miou = mean_over_classes(reduce(_IOU, cms, "dataset"))
                row.update(val_miou=round(miou, 6), val_mdice=round(mean_over_classes(reduce(_DICE, cms, "dataset")), 6),
                           val_miou_seed=round(mean_over_classes(reduce(_IOU, cms, "seed")), 6))
                if miou > state["best"]:
                    state["best"], state["bad_epochs"], improved = miou, 0, True
                else:
                    state["bad_epochs"] += 1
            state["epoch"] += 1
            state["epoch_in_phase"] += 1
            stop = phase.loss == "segmentation" and cfg.patience and state["bad_epochs"] >= cfg.patience
            last_phase_done = state["phase"] == len(phases) - 1 and state["epoch_in_phase"] >= budget[state["phase"]]
            state["done"] = bool(stop or last_phase_done)
            state["history"].append(row)
            if improved:
                checkpoint.save(best_path, {**meta, "state_dict": trainable_state(model), "epoch": epoch + 1,
                                            "val": {k: row[k] for k in row if k.startswith("val_")}})
            if state["epoch_in_phase"] >= budget[state["phase"]] and not state["done"]:
                state["phase"] += 1
                state["epoch_in_phase"] = 0
                next_phase = True
            else:
                next_phase = False
            checkpoint.save(last_path, {
                **meta, "state_dict": trainable_state(model), "loop": state,
                "optimizer": None if next_phase else opt.state_dict(),
                "scheduler": None if next_phase or sched is None else sched.state_dict(),
                "rng": torch.get_rng_state(),
            })
            _append_jsonl(log_path, row)
            if run is not None:
                run.log(row)
            val_text = f" val mIoU {row['val_miou']:.3f} mDice {row['val_mdice']:.3f}" if "val_miou" in row else ""
            log(f"{model_name} epoch {epoch + 1}/{total_epochs} [{phase.name}] loss {train_loss:.4f}{val_text} "
                f"({row['images_per_s']:.1f} img/s)")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
            if stop:
                log(f"{model_name}: early stop, no better validation mIoU for {cfg.patience} epochs")
            if state["done"] or next_phase:
                break
    if run is not None:
        run.finish()
    if not best_path.is_file():
        raise PetsegError(f"{model_name}: no segmentation epoch finished, so there is no best checkpoint")
    return TrainResult(model_name, best_path, last_path, state["best"], baseline, state["epoch"],
                       float(np.median(images_per_s)) if images_per_s else float("nan"), state["history"])


def _train_epoch(model, spec, mcfg, cfg, loss_kind, train_set, opt, sched, runtime, class_weights, ce_w, dice_w,
                 epoch, progress, model_name, last_path) -> tuple[float, int]:
    torch.manual_seed(sample_seed(cfg.seed, epoch, 1))  # dropout and friends: same per epoch after resume
    train_set.epoch = epoch
    gen = torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, 2))
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=len(train_set) > cfg.batch_size,
                        num_workers=cfg.workers, persistent_workers=False)
    model.train()
    total, seen = 0.0, 0
    steps = len(loader)
    bar = loader
    if progress:
        from tqdm import tqdm

        bar = tqdm(loader, desc=f"{model_name} epoch {epoch + 1}", unit="batch", leave=False)
    for step, batch in enumerate(bar):
        inputs = model_inputs(spec.inputs, batch["image"].to(runtime.device), batch["point"].to(runtime.device),
                              mcfg.heatmap_sigma, runtime.channels_last)
        target = batch["label"].to(runtime.device)
        with runtime.autocast():
            out = model(**inputs)
        if loss_kind == "reconstruction":
            loss = reconstruction_loss(out, inputs["image"])
        else:
            loss = segmentation_loss(out, target, class_weights, ce_w, dice_w)
        if not torch.isfinite(loss):
            kept = f"last good checkpoint kept: {last_path}" if last_path.exists() else "no checkpoint was written yet"
            raise PetsegError(f"{model_name}: loss is {loss.item()} at epoch {epoch + 1} step {step + 1}; stopped ({kept})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step(epoch + (step + 1) / steps)
        total += loss.item() * len(target)
        seen += len(target)
    return total / max(seen, 1), seen


def _all_background_miou(prepared: PreparedSplit, positions) -> float:
    """mIoU (dataset reduction) of predicting background everywhere: the floor to beat."""
    counts = np.zeros(3, np.int64)
    for p in positions:
        counts += np.bincount(prepared.label(int(p)).reshape(-1), minlength=256)[:3]
    cm = np.zeros((3, 3), np.int64)
    cm[:, 0] = counts
    return mean_over_classes(iou(cm))


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _wandb_run(enabled: bool, name: str, meta: dict):
    try:
        import wandb
    except ImportError:
        raise PetsegError("--wandb needs the wandb package: pip install wandb") from None
    mode = os.environ.get("WANDB_MODE", "offline")  # offline unless the user opts in to syncing
    return wandb.init(project="petseg-bench", name=name, config=meta, mode=mode)

