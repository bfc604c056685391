"""The one training loop: phases of epochs, with everything else in small hooks.

As detectron2's ``engine/train_loop.py``: :class:`TrainLoop` runs the phases and epochs
and calls its hooks at fixed points; validation, best/last checkpoints, early stopping,
the JSONL log, W&B and the console are hooks (:mod:`.hooks`). :class:`TrainContext`
is what the loop and its hooks share for one run (:mod:`.training` builds it);
:class:`TrainState` is what a resume restores.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ..backbones import Backbone, FeatureCache
from ..config import TrainConfig
from ..errors import PLUGIN_FAILURES, ModelRunError, PetsegError, one_line
from ..specs import ModelConfig, ModelSpec, Phase
from .distributed import Dist, EpochBatches, epoch_seed
from .inputs import model_inputs
from .losses import reconstruction_loss, segmentation_loss, species_loss
from .predictor import Predictor
from .runtime import Runtime, compiled

if TYPE_CHECKING:
    from ..data.cache import PreparedSplit
    from ..data.datasets import LetterboxedSet


@dataclass(kw_only=True)
class TrainContext:
    """Everything the loop and its hooks share for one training run."""

    name: str
    spec: ModelSpec
    mcfg: ModelConfig
    cfg: TrainConfig
    runtime: Runtime
    model: torch.nn.Module
    backbone: Backbone | None
    prepared: "PreparedSplit"
    train_set: "LetterboxedSet"
    val_pos: np.ndarray
    meta: dict
    run_dir: Path
    progress: Callable[[Iterable, str], Iterable] = lambda it, desc: it
    extra_set: Dataset | None = None  # images without masks, for phases that need none
    dist: Dist = field(default_factory=Dist)  # this process's rank among data-parallel ones

    def __post_init__(self) -> None:
        self.phases: list[Phase] = list(self.spec.phases)
        if self.cfg.phase_epochs is not None:
            if len(self.cfg.phase_epochs) != len(self.phases):
                names = ", ".join(p.name for p in self.phases)
                raise PetsegError(f"--phase-epochs gives {len(self.cfg.phase_epochs)} numbers but {self.spec.name} "
                                  f"has {len(self.phases)} training phase(s): {names}")
            self.budget = list(self.cfg.phase_epochs)
        else:
            self.budget = phase_epochs(self.cfg.epochs, [p.epochs_fraction for p in self.phases])
        self.predictor = Predictor(self.model, self.spec, self.mcfg, self.runtime, self.backbone)
        self.class_weights = torch.tensor(self.cfg.class_weights, dtype=torch.float32, device=self.runtime.device)
        self.ce_weight, self.dice_weight = self.cfg.loss_weights(self.spec)

    best_path = property(lambda self: self.run_dir / "best.pt")
    last_path = property(lambda self: self.run_dir / "last.pt")
    log_path = property(lambda self: self.run_dir / "metrics.jsonl")


def phase_epochs(total: int, fractions: list[float]) -> list[int]:
    """Split the epoch budget over phases by their fractions, each phase at least one epoch."""
    weights = np.asarray(fractions, dtype=float)
    counts = np.maximum(1, np.floor(total * weights / weights.sum()).astype(int))
    counts[-1] = max(1, total - counts[:-1].sum())  # the last (segmentation) phase takes the rest
    return counts.tolist()


@dataclass
class TrainState:
    """Where training stands; saved in last.pt as ``loop`` and restored by --resume."""

    epoch: int = 0  # epochs finished, over all phases
    phase: int = 0
    epoch_in_phase: int = 0
    best: float = -1.0  # best validation mIoU so far
    bad_epochs: int = 0  # epochs since the best
    history: list[dict] = field(default_factory=list)
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check(self) -> None:
        """ValueError when a field has the wrong type (a damaged or hand-edited last.pt)."""
        for name in ("epoch", "phase", "epoch_in_phase", "bad_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"loop.{name} is {value!r}")
        if not isinstance(self.best, (int, float)) or not isinstance(self.history, list):
            raise ValueError("loop.best or loop.history has the wrong type")


class HookBase:
    """A training hook: override any of the calls; ``loop`` gives access to everything.

    ``after_epoch`` hooks decide (validate, track the best) and return True to stop the
    training after this epoch; ``after_record`` hooks act on the settled epoch (save,
    log), ``loop.stop`` telling them whether it was the last; ``after_train`` runs
    however the loop ends, an exception included (close what ``before_train`` opened)."""

    def before_train(self, loop: "TrainLoop") -> None: ...
    def after_epoch(self, loop: "TrainLoop") -> bool | None: ...
    def after_record(self, loop: "TrainLoop") -> None: ...
    def after_train(self, loop: "TrainLoop") -> None: ...


class TrainLoop:
    def __init__(self, ctx: TrainContext, state: TrainState, hooks: list[HookBase], resumed_optim=None):
        self.ctx, self.state, self.hooks = ctx, state, hooks
        self.opt = self.sched = None
        self.train_model = ctx.model  # DDP-wrapped per phase when data-parallel
        self.row: dict = {}
        self.stop = self.next_phase = False  # set by the loop alone, from the hooks' answers
        self._resumed_optim = resumed_optim  # (optimizer state, scheduler state) of an interrupted run

    def call(self, event: str) -> bool:
        """Every hook's ``event``, in order; True when any of them answered True."""
        answers = [getattr(hook, event)(self) for hook in self.hooks]
        return any(a is True for a in answers)

    @property
    def improved(self) -> bool:
        """This epoch was validated and set a new best (TrackBest resets the count)."""
        return "val_miou" in self.row and self.state.bad_epochs == 0

    def run(self) -> None:
        ctx, st = self.ctx, self.state
        self.call("before_train")
        try:
            while not st.done and st.phase < len(ctx.phases):
                self.start_phase()
                while st.epoch_in_phase < ctx.budget[st.phase]:
                    if self.run_epoch():
                        break
        finally:  # an exception too: hooks close what they opened (a W&B run)
            self.call("after_train")

    def run_epoch(self) -> bool:
        """One epoch, decided and recorded; True when the phase (or the training) ends."""
        ctx, st = self.ctx, self.state
        phase = ctx.phases[st.phase]
        self.row = {"epoch": st.epoch + 1, "phase": phase.name}
        self.stop = False
        self.train_epoch(phase.loss)
        st.epoch += 1
        st.epoch_in_phase += 1
        self.stop = self.call("after_epoch")
        phase_over = st.epoch_in_phase >= ctx.budget[st.phase]
        st.done = bool(self.stop or (phase_over and st.phase == len(ctx.phases) - 1))
        self.next_phase = phase_over and not st.done
        if self.next_phase:
            st.phase, st.epoch_in_phase = st.phase + 1, 0
        st.history.append(self.row)
        self.call("after_record")
        return st.done or self.next_phase

    def start_phase(self) -> None:
        ctx = self.ctx
        if len(ctx.phases) > 1:
            ctx.model.set_phase(ctx.phases[self.state.phase].name)
        self.train_model = ctx.dist.wrap(ctx.model)  # after set_phase: it may freeze parameters
        if ctx.cfg.compile:  # the training forward and backward only: validation runs ctx.model eagerly
            self.train_model = compiled(self.train_model)
        self.opt = make_optimizer(ctx.cfg, param_groups(ctx.model, ctx.spec.lr_scales, ctx.cfg.lr))
        self.sched = make_scheduler(ctx.cfg, self.opt)
        if self._resumed_optim is not None:
            opt_state, sched_state = self._resumed_optim
            try:
                if opt_state:
                    self.opt.load_state_dict(opt_state)
                if self.sched is not None and sched_state:
                    self.sched.load_state_dict(sched_state)
            except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
                raise PetsegError(f"--resume: the optimiser state in {ctx.last_path} does not fit this model "
                                  f"({type(exc).__name__}: {one_line(exc, 160)})") from None
            self._resumed_optim = None

    def train_epoch(self, loss_kind: str) -> None:
        """One pass over the training set (this rank's slice of each global batch); fills
        the row's loss, lr and speed (over all ranks)."""
        ctx, epoch = self.ctx, self.state.epoch
        torch.manual_seed(epoch_seed(ctx.cfg.seed, epoch, 1, ctx.dist))  # dropout and friends: same per epoch after resume
        ctx.train_set.epoch = epoch
        data = ctx.train_set
        if loss_kind != "segmentation" and ctx.extra_set is not None:  # no masks needed: more images
            data = ConcatDataset([ctx.train_set, ctx.extra_set])
        order = epoch_seed(ctx.cfg.seed, epoch, 2)
        batches = EpochBatches(len(data), ctx.cfg.batch_size, order, len(data) > ctx.cfg.batch_size, ctx.dist)
        loader = DataLoader(data, batch_sampler=batches, generator=torch.Generator().manual_seed(order),
                            num_workers=ctx.cfg.workers)
        ctx.model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        for step, batch in enumerate(ctx.progress(loader, f"{ctx.name} epoch {epoch + 1}")):
            loss = self.step(batch, loss_kind, step)
            if self.sched is not None:
                self.sched.step(epoch + (step + 1) / len(loader))
            total += loss * len(batch["label"])
            seen += len(batch["label"])
        ctx.dist.sync_buffers(ctx.model)
        total, seen = ctx.dist.sum(total, seen)
        seen = int(seen)
        seconds = time.perf_counter() - t0
        self.row.update(train_loss=round(total / max(seen, 1), 6), lr=base_lr(self.opt),
                        seconds=round(seconds, 2), images_per_s=round(seen / seconds, 2))

    def step(self, batch: dict, loss_kind: str, index: int) -> float:
        ctx = self.ctx
        try:
            loss = self.forward_loss(batch, loss_kind)
        except PetsegError:
            raise
        except PLUGIN_FAILURES as exc:  # a plugin's forward failing (sys.exit too): one line naming it and where
            if ctx.cfg.compile and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise PetsegError(f"{ctx.name}: --compile: torch.compile failed ({type(exc).__name__}: "
                                  f"{one_line(exc, 160)}); train without --compile") from None
            raise ModelRunError.from_exception(ctx.name, exc).at(
                f"training at epoch {self.state.epoch + 1} step {index + 1}") from None
        if not torch.isfinite(loss):
            kept = f"last good checkpoint kept: {ctx.last_path}" if ctx.last_path.exists() else "no checkpoint was written yet"
            raise PetsegError(f"{ctx.name}: loss is {loss.item()} at epoch {self.state.epoch + 1} step {index + 1}; "
                              f"stopped ({kept})")
        self.opt.zero_grad(set_to_none=True)
        try:
            loss.backward()
        except PLUGIN_FAILURES as exc:  # a plugin's backward failing
            raise ModelRunError.from_exception(ctx.name, exc).at(
                f"training (backward) at epoch {self.state.epoch + 1} step {index + 1}") from None
        if ctx.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in ctx.model.parameters() if p.requires_grad], ctx.cfg.grad_clip,
                                           foreach=ctx.cfg.optimizer_impl != "loop")
        self.opt.step()
        return loss.item()

    def forward_loss(self, batch: dict, loss_kind: str) -> torch.Tensor:
        ctx = self.ctx
        device = ctx.runtime.device
        inputs = model_inputs(ctx.spec, batch["image"].to(device), batch["point"].to(device), ctx.backbone,
                              FeatureCache(), ctx.runtime.autocast)
        target = batch["label"].to(device)
        with ctx.runtime.autocast():
            out = self.train_model(**inputs)
        if loss_kind == "reconstruction":
            return reconstruction_loss(out, inputs["image"])
        if loss_kind == "species":
            return species_loss(out, batch["species"].to(device))
        return segmentation_loss(out, target, ctx.class_weights, ctx.ce_weight, ctx.dice_weight, ctx.dist)


def param_groups(model: torch.nn.Module, lr_scales, lr: float) -> list[dict]:
    """Trainable parameters grouped by learning rate: ``lr`` times the scale of the first
    prefix of ``lr_scales`` a parameter's name starts with, else ``lr``."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((s for prefix, s in lr_scales.items() if name.startswith(prefix)), 1.0)
            groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": lr * s, "lr_scale": s} for s, ps in groups.items()]


def base_lr(opt: torch.optim.Optimizer) -> float:
    """The unscaled group's current lr (group 0 may be a scaled one, e.g. a pretrained
    encoder at 0.3x); the first group's when every group is scaled."""
    groups = opt.param_groups
    return next((g["lr"] for g in groups if g.get("lr_scale", 1.0) == 1.0), groups[0]["lr"])


#: torch's switches for each ``TrainConfig.optimizer_impl``. On the CPU torch's own default
#: is the loop; foreach gives the same bits (tests/test_train_speed.py), so it is ours.
OPTIMIZER_IMPL_KWARGS = {"foreach": {"foreach": True}, "fused": {"fused": True}, "loop": {"foreach": False}}


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """The configured optimiser over ``params`` (parameter groups may carry their own lr)."""
    impl = OPTIMIZER_IMPL_KWARGS[cfg.optimizer_impl]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, **impl)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, **impl)
    return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)


def make_scheduler(cfg, opt: torch.optim.Optimizer):
    if cfg.scheduler == "none":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.restart_epochs, eta_min=cfg.lr * 0.01)
