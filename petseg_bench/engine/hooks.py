"""Training hooks, one concern each (as detectron2's ``engine/hooks.py``).

``after_epoch`` hooks decide (validation, best tracking, early stopping) in list order,
early stopping by returning its decision; ``after_record`` hooks act on the settled
epoch (checkpoints, logs). The metrics row
is written before last.pt, so a kill between the two loses nothing: a resume drops
rows past the epoch last.pt holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import write_text_atomic
from ..errors import ModelRunError, PetsegError, write_error
from ..metrics import dice, iou, mean_over_classes, reduce
from ..specs import MetricSpec
from . import checkpoint
from .inference import clean_batches, inference_on_dataset
from .predictor import trainable_state
from .train_loop import HookBase, TrainLoop


_IOU, _DICE = MetricSpec("iou", iou, per_class=True), MetricSpec("dice", dice, per_class=True)


class FiniteWeights(HookBase):
    """Stop, keeping the last good checkpoint, when an epoch left weights that are not
    finite (a learning rate far too high): nothing is validated, logged or saved from it."""

    def after_epoch(self, loop: TrainLoop) -> None:
        ctx = loop.ctx
        bad = checkpoint.nonfinite(trainable_state(ctx.spec, ctx.model))
        if bad[0]:
            raise PetsegError(f"{ctx.name}: training diverged at epoch {loop.state.epoch} "
                              f"(--lr {ctx.cfg.lr:g} too high?): {checkpoint.describe_nonfinite(bad)}; "
                              f"stopped ({kept_checkpoint(ctx)})")


def kept_checkpoint(ctx) -> str:
    """What a stopped training leaves: the last good checkpoint, if any."""
    return f"last good checkpoint kept: {ctx.last_path}" if ctx.last_path.exists() else "no checkpoint was written yet"


class Validation(HookBase):
    """Validation mIoU / mDice (dataset reduction; mIoU seed too) after segmentation epochs
    (data-parallel: each rank validates its share, the per-image counts are gathered)."""

    def after_epoch(self, loop: TrainLoop) -> None:
        ctx = loop.ctx
        if ctx.phases[loop.state.phase].loss != "segmentation":
            return
        batches = clean_batches(ctx.prepared, ctx.dist.split(ctx.val_pos), {ctx.name: ctx.predictor}, ctx.cfg.batch_size)
        try:
            cms = ctx.dist.gather(inference_on_dataset({ctx.name: ctx.predictor}, batches)[ctx.name])
        except ModelRunError as exc:
            raise exc.at(f"validating after epoch {loop.state.epoch}") from None
        loop.row.update(val_miou=round(mean_over_classes(reduce(_IOU, cms, "dataset")), 6),
                        val_mdice=round(mean_over_classes(reduce(_DICE, cms, "dataset")), 6),
                        val_miou_seed=round(mean_over_classes(reduce(_IOU, cms, "seed")), 6))


class TrackBest(HookBase):
    """Is this epoch's validation mIoU the best so far?"""

    def after_epoch(self, loop: TrainLoop) -> None:
        if "val_miou" not in loop.row:
            return
        st = loop.state
        if loop.row["val_miou"] > st.best:
            st.best, st.bad_epochs = loop.row["val_miou"], 0  # loop.improved reads this
        else:
            st.bad_epochs += 1


class EarlyStopping(HookBase):
    """Stop after ``patience`` segmentation epochs without a better validation mIoU."""

    def __init__(self, patience: int):
        self.patience = patience

    def after_epoch(self, loop: TrainLoop) -> bool:
        return bool(self.patience and "val_miou" in loop.row and loop.state.bad_epochs >= self.patience)


class BestCheckpoint(HookBase):
    def after_record(self, loop: TrainLoop) -> None:
        if loop.improved:
            ctx = loop.ctx
            checkpoint.save(ctx.best_path, {**ctx.meta, "state_dict": trainable_state(ctx.spec, ctx.model),
                                            "epoch": loop.row["epoch"],
                                            "val": {k: v for k, v in loop.row.items() if k.startswith("val_")}})


class LastCheckpoint(HookBase):
    """last.pt: weights, loop state, optimiser, scheduler and RNG, for an exact resume."""

    def after_record(self, loop: TrainLoop) -> None:
        import torch

        ctx = loop.ctx
        fresh = loop.next_phase  # the next phase starts with a new optimiser
        checkpoint.save(ctx.last_path, {
            **ctx.meta, "state_dict": trainable_state(ctx.spec, ctx.model), "loop": loop.state.to_dict(),
            "optimizer": None if fresh else loop.opt.state_dict(),
            "scheduler": None if fresh or loop.sched is None else loop.sched.state_dict(),
            "rng": torch.get_rng_state(),
        })


class JsonlLog(HookBase):
    """One JSON line per epoch in metrics.jsonl, flushed to disk before last.pt is written."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def before_train(self, loop: TrainLoop) -> None:
        if not self.path.exists():
            return
        if loop.state.epoch == 0:
            try:
                self.path.unlink()  # a fresh run starts a fresh log
            except OSError as exc:
                raise write_error(self.path, exc) from None
            return
        keep = [line for line in self.path.read_text(errors="replace").splitlines()
                if _epoch_of(line) <= loop.state.epoch]
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def after_record(self, loop: TrainLoop) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(loop.row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a half-written line is dropped on resume (past last.pt's epoch)
            raise write_error(self.path, exc) from None


def _epoch_of(line: str) -> int:
    try:
        return int(json.loads(line).get("epoch", 1 << 30))
    except (ValueError, AttributeError):
        return 1 << 30  # unreadable: dropped


class Console(HookBase):
    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def after_record(self, loop: TrainLoop) -> None:
        ctx, row = loop.ctx, loop.row
        val = f" val mIoU {row['val_miou']:.3f} mDice {row['val_mdice']:.3f}" if "val_miou" in row else ""
        self.log(f"{ctx.name} epoch {row['epoch']}/{sum(ctx.budget)} [{row['phase']}] loss {row['train_loss']:.4f}"
                 f"{val} ({row['images_per_s']:.1f} img/s)")
        if loop.stop:
            self.log(f"{ctx.name}: early stop, no better validation mIoU for {ctx.cfg.patience} epochs")


class EpochCallback(HookBase):
    """Calls ``fn(epochs finished)`` after each epoch (tests use it to interrupt a run)."""

    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def after_record(self, loop: TrainLoop) -> None:
        self.fn(loop.state.epoch)


class WandB(HookBase):
    """Weights & Biases logging, offline unless WANDB_MODE says otherwise."""

    def __init__(self, name: str, meta: dict):
        self.run = open_wandb_run(name, meta)

    def after_record(self, loop: TrainLoop) -> None:
        self.run.log(loop.row)

    def after_train(self, loop: TrainLoop) -> None:
        self.run.finish()


def open_wandb_run(name: str, meta: dict):
    try:
        import wandb
    except ImportError:
        raise PetsegError("--wandb needs the wandb package: pip install wandb") from None
    mode = os.environ.get("WANDB_MODE", "offline")
    return wandb.init(project="petseg-bench", name=name, config=meta, mode=mode)


def all_background_miou(prepared, positions) -> float:
    """mIoU (dataset reduction) of predicting background everywhere: the floor to beat."""
    counts = np.zeros(3, np.int64)
    for p in positions:
        counts += np.bincount(prepared.label(int(p)).reshape(-1), minlength=256)[:3]
    cm = np.zeros((3, 3), np.int64)
    cm[:, 0] = counts
    return mean_over_classes(iou(cm))
