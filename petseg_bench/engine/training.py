"""``petseg-bench train``: set up one model's training and run the one loop.

A model's spec says which inputs it needs, its loss weights, its phases and its options;
:func:`train` does the rest: seeded split and augmentation, the model and its frozen
backbone, an exact resume from last.pt, and the hooks (validation at the original mask
resolution, best/last checkpoints written atomically, early stopping, JSONL log, W&B,
console) around :class:`~.train_loop.TrainLoop`. Under torchrun the same loop runs
data-parallel (:mod:`.distributed`): rank 0 locks, checkpoints and logs.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..data.cache import data_change, prepare
from ..data.layout import refuse_overlap
from ..data.points import EVAL_CLICK_RULE
from ..data.datasets import JoinedSet, LetterboxedSet
from ..data.pseudo import load_pseudo
from ..data.unlabelled import UnlabelledSet, read_unlabelled
from ..data.split import limit, validation_split
from ..errors import PetsegError, one_line, write_error
from ..families import model_dirname
from ..plugins import refuse_training
from ..plugins import get_registry
from ..provenance import code_version
from ..specs import ModelSpec
from . import checkpoint, hooks
from .distributed import Dist, init_from_env
from .dropped import note_dropped
from .lock import folder_lock
from .predictor import attach_backbone, build_model, load_weights
from .runtime import Runtime
from .train_loop import TrainContext, TrainLoop, TrainState

#: Settings that do not change what is computed, so a resume may change them.
RESUME_FREE = {"workers", "device"}


@dataclass(kw_only=True)
class TrainJob:
    """What to train: the model, the loop's config, the model's fields and options."""

    model: str
    cfg: TrainConfig
    data_root: Path
    out_dir: Path
    model_fields: dict[str, Any] = field(default_factory=dict)  # generic ModelConfig fields
    model_options: dict[str, Any] = field(default_factory=dict)  # the model's own options
    profile: str | None = None  # selects the spec's per-profile option values
    resume: bool = False
    cache_dir: Path | None = None
    wandb: bool = False
    overwrite: bool = False  # replace a previous run of this model in out_dir


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


def train(job: TrainJob, log: Callable[[str], None] = print, progress: bool = False,
          on_epoch_end: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``job`` into ``OUT/<model>``, holding that folder's lock throughout (under
    torchrun: data-parallel, rank 0 holding the lock and writing)."""
    if job.resume and job.overwrite:
        raise PetsegError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    dist = init_from_env(job.cfg.device)
    try:
        return _train(job, dist, log if dist.is_main else _quiet, progress and dist.is_main, on_epoch_end)
    finally:
        dist.close()


def _quiet(_message: str) -> None:
    pass


def _train(job: TrainJob, dist: Dist, log: Callable[[str], None], progress: bool,
           on_epoch_end: Callable[[int], None] | None) -> TrainResult:
    with ExitStack() as held:
        def start():
            if dist.is_main:
                held.enter_context(folder_lock(Path(job.out_dir) / model_dirname(job.model), log=log))
            refuse_existing_run(job)
            ctx = setup(job, progress, log, dist)
            return (ctx, *resume_state(ctx, job.resume, log))

        ctx, state, optim = dist.agree(start)
        if sum(ctx.budget) != job.cfg.epochs:
            log(f"{job.model}: {len(ctx.phases)} training phases need at least one epoch each; "
                f"running {sum(ctx.budget)} epochs, not {job.cfg.epochs}")
        if state.done:
            log(f"{job.model}: already finished ({state.epoch} epochs); nothing to do")
        if job.overwrite and dist.is_main:
            remove_run(ctx, log)
        baseline = hooks.all_background_miou(ctx.prepared, ctx.val_pos)
        TrainLoop(ctx, state, loop_hooks(job, ctx, log, on_epoch_end), optim).run()
        if dist.is_main and not ctx.best_path.is_file():
            raise PetsegError(f"{job.model}: no segmentation epoch finished, so there is no best checkpoint")
    speeds = [r["images_per_s"] for r in state.history if "images_per_s" in r]
    return TrainResult(job.model, ctx.best_path, ctx.last_path, state.best, baseline, state.epoch,
                       float(np.median(speeds)) if speeds else float("nan"), state.history)


def loop_hooks(job: TrainJob, ctx: TrainContext, log: Callable[[str], None],
               on_epoch_end: Callable[[int], None] | None) -> list:
    """The loop's hooks, in order; checkpoints and logs on rank 0 only."""
    out = [hooks.FiniteWeights(), hooks.Validation(), hooks.TrackBest(), hooks.EarlyStopping(job.cfg.patience)]
    if ctx.dist.is_main:
        out += [hooks.BestCheckpoint(), hooks.JsonlLog(ctx.log_path), hooks.LastCheckpoint(), hooks.Console(log)]
        if job.wandb:
            out.append(hooks.WandB(job.model, ctx.meta))
    if on_epoch_end is not None:
        out.append(hooks.EpochCallback(on_epoch_end))
    return out


#: The files of one model's training run in OUT/<model>.
RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl")


def refuse_existing_run(job: TrainJob) -> None:
    """A run of this model in OUT is continued (--resume) or replaced (--overwrite), never
    overwritten silently."""
    run_dir = Path(job.out_dir) / model_dirname(job.model)  # smp:Unet:resnet18 -> smp+Unet+resnet18
    found = [n for n in ("best.pt", "last.pt") if (run_dir / n).is_file()]
    if found and not (job.resume or job.overwrite):
        raise PetsegError(f"{run_dir} already holds a run of {job.model} ({', '.join(found)}): pass --resume to "
                          f"continue it, --overwrite to replace it, or choose another --out")


def remove_run(ctx: TrainContext, log: Callable[[str], None]) -> None:
    """--overwrite: the previous run's files go just before training starts (so a
    mistake in the options or the data, caught earlier, leaves them in place)."""
    gone = []
    for name in RUN_FILES:
        path = ctx.run_dir / name
        if path.is_file():
            try:
                path.unlink()
            except OSError as exc:
                raise write_error(path, exc, "(remove)") from None
            gone.append(name)
    if gone:
        log(f"{ctx.name}: --overwrite: removed the previous {', '.join(gone)} in {ctx.run_dir}")


def setup(job: TrainJob, progress: bool, log: Callable[[str], None] = print, dist: Dist | None = None) -> TrainContext:
    """Data, split, model, backbone and checkpoint metadata of a training job."""
    cfg, dist = job.cfg, dist or Dist()
    cfg.validate()
    dist.local_batch(cfg.batch_size)  # the global batch splits evenly over the processes
    refuse_training(job.model)  # an onnx:/torchscript: file is evaluation-only
    spec = get_registry().get("model", job.model)
    mcfg = spec.config(job.model_fields, job.model_options, job.profile)
    check_loss_weights(spec, cfg)
    runtime = dist.runtime(Runtime.choose(cfg.device, cfg.precision))
    torch.set_float32_matmul_precision("high")
    refuse_overlap(job.data_root)  # a test image trained on would inflate every later score
    prepared = prepare(job.data_root, "trainval", cfg.void, job.cache_dir, progress=progress)
    if len(prepared) < 2:
        raise PetsegError(f"trainval split at {job.data_root} has {len(prepared)} usable images; need at least 2")
    note_dropped(prepared, log)
    train_pos, val_pos = validation_split(prepared.species, cfg.val_fraction, cfg.seed)
    train_pos, val_pos = limit(train_pos, cfg.limit, cfg.seed), limit(val_pos, cfg.val_limit, cfg.seed)
    pseudo = load_pseudo(cfg.pseudo, job.data_root, job.cache_dir, progress) if cfg.pseudo else None
    backbone = attach_backbone(spec, mcfg)
    model = build_model(spec, mcfg, runtime, cfg.seed)
    if backbone is not None:
        backbone.to(runtime.device)
    meta = {
        "model": job.model, "model_config": mcfg.to_dict(), "train_config": cfg.to_dict(),
        "data_fingerprint": prepared.fingerprint, "n_train": int(len(train_pos)), "n_val": int(len(val_pos)),
        "code_version": code_version(), "runtime": runtime.describe(),
        "backbone": None if backbone is None else backbone.describe(), "encoder": spec.encoder_name(mcfg),
        "eval_click_rule": EVAL_CLICK_RULE if "point" in spec.inputs else None, "processes": dist.world,
    }
    run_dir = Path(job.out_dir) / model_dirname(job.model)  # smp:Unet:resnet18 -> smp+Unet+resnet18
    train_set = LetterboxedSet(prepared, train_pos, mcfg.in_size, augment=cfg.augment, clicks="train",
                               seed=cfg.seed, salt_pepper=cfg.salt_pepper)
    if pseudo is not None:  # the training part only: validation stays the labelled val_pos
        meta["pseudo"] = pseudo.info
        train_set = JoinedSet([train_set, LetterboxedSet(
            pseudo.prepared, np.arange(len(pseudo.prepared)), mcfg.in_size, augment=cfg.augment, clicks="train",
            seed=cfg.seed, salt_pepper=cfg.salt_pepper, stream=1)])
        log(f"{job.model}: {len(pseudo.prepared)} pseudo-labelled images from {cfg.pseudo} join the "
            f"{len(train_pos)} labelled training images (threshold {pseudo.info['threshold']})")
    extra = unlabelled_set(cfg, spec, job.data_root, mcfg.in_size, log)
    if extra is not None:
        meta["n_unlabelled"] = len(extra)
    return TrainContext(name=job.model, spec=spec, mcfg=mcfg, cfg=cfg, runtime=runtime, model=model, backbone=backbone,
                        prepared=prepared, train_set=train_set, val_pos=val_pos, meta=meta, run_dir=run_dir,
                        progress=_progress_bar if progress else (lambda it, desc: it), extra_set=extra, dist=dist)


def unlabelled_set(cfg: TrainConfig, spec: ModelSpec, data_root: Path, size: int,
                   log: Callable[[str], None]) -> Dataset | None:
    """The extra mask-free images (--unlabelled) when a phase of the model can use them."""
    if not cfg.unlabelled or all(p.loss == "segmentation" for p in spec.phases):
        return None
    folder = Path(f"{Path(data_root).resolve()}-unlabelled") if cfg.unlabelled == "auto" else Path(cfg.unlabelled)
    if cfg.unlabelled == "auto" and not folder.is_dir():
        log(f"{spec.name}: no unlabelled images beside the data ({folder}); its mask-free phases use the labelled ones")
        return None
    images = read_unlabelled(folder, data_root)
    log(f"{spec.name}: {len(images)} unlabelled images from {folder} join its mask-free phases")
    return UnlabelledSet(images, size)


def check_loss_weights(spec: ModelSpec, cfg: TrainConfig) -> None:
    """A segmentation phase with both loss weights at 0 would train on nothing."""
    ce, dice = cfg.loss_weights(spec)
    if ce == 0 and dice == 0 and any(p.loss == "segmentation" for p in spec.phases):
        raise PetsegError(f"--ce-weight {ce:g} and --dice-weight {dice:g} leave model {spec.name} no loss to "
                          "train on; give one of them a weight > 0")


def _progress_bar(iterable: Iterable, desc: str) -> Iterable:
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False)


def resume_state(ctx: TrainContext, resume: bool, log: Callable[[str], None]) -> tuple[TrainState, tuple | None]:
    """A fresh state, or the state, weights, optimiser and RNG of last.pt (--resume)."""
    if not resume:
        return TrainState(), None
    if not ctx.last_path.is_file():
        log(f"{ctx.name}: --resume, but {ctx.last_path} does not exist; starting from scratch")
        return TrainState(), None
    saved = checkpoint.load(ctx.last_path, expect_model=ctx.name)
    if not isinstance(saved.get("loop"), dict):
        raise PetsegError(f"--resume: {ctx.last_path} has no training state (a best.pt copied over it?)")
    saved_model = checkpoint.model_config(saved, ctx.spec, ctx.last_path).to_dict()
    # a setting added since last.pt was written ran at its default there
    saved_train = {**TrainConfig().to_dict(), **(saved.get("train_config") or {})}
    for what, old, now in (("model config", saved_model, ctx.meta["model_config"]),
                           ("train config", saved_train, ctx.meta["train_config"])):
        diff = _config_diff(old, now)
        if diff:
            raise PetsegError(f"--resume: {ctx.last_path} was trained with a different {what} ({'; '.join(diff[:3])})")
    if saved.get("data_fingerprint") != ctx.meta["data_fingerprint"]:
        raise PetsegError(f"--resume: {ctx.last_path} was trained on other data "
                          f"({data_change(ctx.prepared, saved.get('data_fingerprint'))})")
    was, now = (saved.get("pseudo") or {}).get("fingerprint"), (ctx.meta.get("pseudo") or {}).get("fingerprint")
    if was != now:
        raise PetsegError(f"--resume: {ctx.last_path} was trained on other pseudo-labelled images "
                          f"(fingerprint {was} -> {now})")
    load_weights(ctx.spec, ctx.model, saved["state_dict"], ctx.last_path)
    try:
        torch.set_rng_state(saved["rng"])
        state = TrainState.from_dict(saved["loop"])
        state.check()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PetsegError(f"--resume: {ctx.last_path} holds a damaged training state "
                          f"({type(exc).__name__}: {one_line(exc, 120)})") from None
    log(f"{ctx.name}: resuming after epoch {state.epoch}")
    return state, (saved.get("optimizer"), saved.get("scheduler"))


def _config_diff(saved: dict, now: dict) -> list[str]:
    keys = sorted((set(saved) | set(now)) - RESUME_FREE)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
