"""Training configuration and profiles (data, not code paths).

Each training setting is declared once, as a :class:`TrainConfig` field made by
:func:`setting`: its default, its help, its command-line flag and, where it has them,
its choices or its parser. The ``train`` command builds its options from these fields
(:func:`cli_settings`), and :meth:`TrainConfig.validate` checks the choices, so a new
setting is one new field.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import PetsegError

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
#: How the optimiser step runs (train_loop.make_optimizer): foreach gives the per-parameter
#: loop's bits (tests/test_train_speed.py), fused is one kernel and differs in the last bits.
OPTIMIZER_IMPLS = ("foreach", "fused", "loop")
FUSED_OPTIMIZERS = ("adamw", "adam", "sgd")  # torch has no fused CPU RMSprop
AUGMENTATIONS = ("seed", "light", "none")  # petseg_bench.data.augment's names (imports albumentations)
SCHEDULERS = ("cosine", "none")
VOIDS = ("nearest", "ignore")


@dataclass(frozen=True)
class CliSetting:
    """How a TrainConfig field appears on the ``train`` command line.

    ``kind``: the type one value is read as (int, float or str); ``parse(text, flag)``,
    when given, turns the text into the field's value instead (comma-separated lists),
    raising PetsegError with one line; ``choices``: the values validate() accepts."""

    name: str
    flag: str
    help: str
    kind: type
    parse: Callable[[str, str], Any] | None = None
    choices: tuple[str, ...] | None = None


def setting(default: Any, help: str = "", *, kind: type | None = None,  # noqa: A002 - click's word
            parse: Callable[[str, str], Any] | None = None, choices: tuple[str, ...] | None = None,
            flag: str | None = None) -> Any:
    """A TrainConfig field with its command-line option (``--name-with-dashes`` unless
    ``flag`` says otherwise; ``kind`` defaults to the default's type)."""
    meta = {"help": help, "kind": kind or type(default), "parse": parse, "choices": choices, "flag": flag}
    return field(default=default, metadata={"cli": meta})


def comma_floats(n: int) -> Callable[[str, str], tuple[float, ...]]:
    """A parser of exactly ``n`` comma-separated numbers (``--class-weights 1,1,1``)."""
    def parse(text: str, flag: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise PetsegError(f"{flag} needs {n} comma-separated numbers, got {text!r}") from None
        if len(values) != n:
            raise PetsegError(f"{flag} needs {n} comma-separated numbers, got {text!r}")
        if not all(math.isfinite(v) for v in values):
            raise PetsegError(f"{flag} needs {n} finite numbers (no nan or inf), got {text!r}")
        return values
    return parse


def comma_ints(text: str, flag: str) -> tuple[int, ...]:
    """Comma-separated whole numbers (``--phase-epochs 8,32``)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise PetsegError(f"{flag} needs comma-separated whole numbers, got {text!r}") from None


def _choices(names: tuple[str, ...], first_is_default: bool = True) -> str:
    return ", ".join(f"{n} (default)" if first_is_default and k == 0 else n for k, n in enumerate(names))


@dataclass(kw_only=True)
class TrainConfig:
    """Every knob of the one training loop; stored in each checkpoint."""

    epochs: int = setting(100, "Training epochs (over all phases).")
    batch_size: int = setting(16, "Images per optimiser step (under torchrun: the global batch).")
    lr: float = setting(1e-4, "Learning rate.")
    weight_decay: float = setting(1e-2, "Weight decay (adamw, sgd, rmsprop).")
    optimizer: str = setting("adamw", _choices(OPTIMIZERS), choices=OPTIMIZERS)
    #: CosineAnnealingWarmRestarts, restarting every ``restart_epochs``
    scheduler: str = setting("cosine", "cosine (warm restarts, default) or none", choices=SCHEDULERS)
    restart_epochs: int = setting(10, "Epochs per cosine warm-restart cycle.")
    class_weights: tuple[float, float, float] = setting(
        (0.3, 2.2, 0.8), "Cross-entropy weights background,cat,dog (default 0.3,2.2,0.8).", kind=str, parse=comma_floats(3))
    val_fraction: float = setting(0.1, "Share of trainval held out for validation (0..1).")
    ce_weight: float | None = setting(None, "Cross-entropy loss weight (default: the model's).", kind=float)
    dice_weight: float | None = setting(None, "Dice loss weight (default: the model's).", kind=float)
    grad_clip: float = setting(1.0, "Max gradient norm; 0 disables.")
    precision: str = setting("auto", "auto (bf16 where the hardware has it), fp32 or bf16")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N")
    #: epochs without a better validation mIoU before stopping; 0 disables
    patience: int = setting(10, "Early stopping patience in epochs; 0 disables.")
    seed: int = setting(0, "Seeds the split, the initial weights, augmentation and batch order.")
    limit: int | None = setting(None, "Train on a fixed seeded subset of N trainval images.", kind=int)
    val_limit: int | None = setting(None, "Validate on a fixed seeded subset of N images.", kind=int)
    workers: int = setting(1, "Data-loading worker processes.")
    optimizer_impl: str = setting(
        "foreach", "How the optimiser step runs: foreach (default; the same numbers as loop, faster), "
                   "fused (one kernel; adamw, adam, sgd; differs in the last bits) or loop (one parameter at a time).",
        choices=OPTIMIZER_IMPLS)
    #: torch.compile (inductor) of the training forward and backward; validation stays eager.
    #: Off by default: compiled kernels round bf16 differently from eager ones.
    compile: bool = setting(False, "torch.compile the model for training: faster steps after a one-off compile "
                                   "(cached under the petseg cache folder for later runs); numbers differ from "
                                   "eager in the last bits.")
    void: str = setting("nearest", "Void (border) pixels: fill from the nearest valid pixel (default), or ignore them.",
                        choices=VOIDS)
    #: see petseg_bench.data.augment
    augment: str = setting("seed", "Training augmentation: seed (the study's six transforms), "
                                   "light (flip, scale/shift, colour jitter) or none.", choices=AUGMENTATIONS)
    salt_pepper: float = setting(0.0, "Probability of salt-and-pepper noise on a training image (default 0).")
    #: Extra images without masks for phases that need none (reconstruction): a folder
    #: with images/ and labels.csv, or "auto" for ``<data root>-unlabelled`` where it exists.
    unlabelled: str | None = setting(
        None, "Images without masks (images/ + labels.csv) for mask-free phases such as reconstruction; "
              "'auto': the folder <data root>-unlabelled. Test-split names are refused.", kind=str)
    #: Pseudo-labelled images (a folder of ``petseg-bench pseudo-label``), added to the
    #: training part only; their void (unsure) pixels are ignored by CE and Dice.
    pseudo: str | None = setting(
        None, "Pseudo-labelled images (a folder written by `petseg-bench pseudo-label`) added to the training "
              "part only, never to validation or test; their unsure (void) pixels are ignored by the loss.", kind=str)
    #: Epochs per training phase (e.g. (8, 32) for a reconstruction and a
    #: segmentation phase), overriding the model's phase fractions; ``epochs`` is their sum.
    phase_epochs: tuple[int, ...] | None = setting(
        None, "Epochs per training phase, e.g. 8,32 for a model with a reconstruction then a segmentation "
              "phase (default: the model's split of --epochs).", kind=str, parse=comma_ints)

    def loss_weights(self, spec) -> tuple[float, float]:
        """(CE, Dice) weights: these options where given, else the model's own (``spec.loss``)."""
        return (spec.loss.ce if self.ce_weight is None else self.ce_weight,
                spec.loss.dice if self.dice_weight is None else self.dice_weight)

    def validate(self) -> None:
        def bad(option: str, why: str) -> PetsegError:
            return PetsegError(f"{flag_of(option)} {why}")

        for name in ("lr", "weight_decay", "val_fraction", "ce_weight", "dice_weight", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise bad(name, f"must be a finite number, got {value}")
        if self.epochs < 1:
            raise bad("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise bad("lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        for s in cli_settings():
            if s.choices is not None and getattr(self, s.name) not in s.choices:
                raise bad(s.name, f"must be one of {', '.join(s.choices)}, got {getattr(self, s.name)!r}")
        if self.restart_epochs < 1:
            raise bad("restart_epochs", f"must be >= 1, got {self.restart_epochs}")
        if len(self.class_weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in self.class_weights):
            raise bad("class_weights", f"needs three non-negative numbers, got {self.class_weights}")
        if not 0.0 < self.val_fraction < 1.0:
            raise bad("val_fraction", f"must be strictly between 0 and 1, got {self.val_fraction}")
        self._validate_loss_weights(bad)
        if self.grad_clip < 0:
            raise bad("grad_clip", f"must be >= 0, got {self.grad_clip}")
        if self.patience < 0:
            raise bad("patience", f"must be >= 0, got {self.patience}")
        check_seed(self.seed)
        for name in ("limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise bad(name, f"must be >= 2, got {value}")
        if not 0.0 <= self.salt_pepper <= 1.0:
            raise bad("salt_pepper", f"must be a probability within 0..1, got {self.salt_pepper}")
        if self.workers < 0:
            raise bad("workers", f"must be >= 0, got {self.workers}")
        if self.optimizer_impl == "fused" and self.optimizer not in FUSED_OPTIMIZERS:
            raise bad("optimizer_impl", f"fused needs --optimizer {', '.join(FUSED_OPTIMIZERS)}, got {self.optimizer!r} "
                                         f"(pass --optimizer-impl foreach with it)")
        if self.phase_epochs is not None:
            if not self.phase_epochs or not all(isinstance(e, numbers.Integral) and e >= 1 for e in self.phase_epochs):
                raise bad("phase_epochs", f"needs whole numbers >= 1, one per training phase, got {list(self.phase_epochs)}")
            if sum(self.phase_epochs) != self.epochs:
                raise bad("phase_epochs", f"sum to {sum(self.phase_epochs)} epochs but --epochs is {self.epochs}")

    def _validate_loss_weights(self, bad) -> None:
        for name in ("ce_weight", "dice_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise bad(name, f"must be >= 0, got {value}")
        if self.ce_weight == 0 and self.dice_weight == 0:
            raise PetsegError("--ce-weight 0 and --dice-weight 0 leave no loss to train on; give one of them a weight > 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_weights"] = list(self.class_weights)
        d["phase_epochs"] = None if self.phase_epochs is None else list(self.phase_epochs)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "class_weights" in values:
            values["class_weights"] = tuple(values["class_weights"])
        if values.get("phase_epochs") is not None:
            values["phase_epochs"] = tuple(values["phase_epochs"])
        return cls(**values)


def cli_settings(config: type | None = None) -> list[CliSetting]:
    """The command-line settings of ``config`` (TrainConfig by default), in field order."""
    out = []
    for f in dataclasses.fields(config or TrainConfig):
        meta = f.metadata.get("cli")
        if meta is not None:
            out.append(CliSetting(f.name, meta["flag"] or f"--{f.name.replace('_', '-')}", meta["help"],
                                  meta["kind"], meta["parse"], meta["choices"]))
    return out


def flag_of(name: str) -> str:
    """The command-line flag of the TrainConfig field ``name``."""
    return next((s.flag for s in cli_settings() if s.name == name), f"--{name.replace('_', '-')}")


#: Seeds feed numpy, torch and per-image generators: 0 .. 2**32 - 1 works for all of them.
MAX_SEED = 2**32 - 1


def check_seed(seed: int, option: str = "--seed") -> None:
    if not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise PetsegError(f"{option} must be between 0 and {MAX_SEED}, got {seed}")


@dataclass(frozen=True)
class Profile:
    """Named defaults for the training loop, the generic model fields and the model options
    several models share (``options``: set for each model that declares the option, e.g.
    ``base_channels``); explicit options win. A model's own values per profile live on
    its spec (``ModelSpec.profiles``)."""

    name: str
    description: str
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        "paper", "the seed study's settings: 256 px, 64 base channels, 100 epochs, batch 16",
        train={"epochs": 100, "batch_size": 16, "lr": 1e-4, "patience": 10},
        model={"in_size": 256}, options={"base_channels": 64},
    ),
    "quick": Profile(
        "quick", "CPU minutes: 96 px, 16 base channels, 400 training images, 12 epochs, lr 1e-3",
        train={"epochs": 12, "batch_size": 16, "lr": 1e-3, "limit": 400, "val_limit": 60,
               "patience": 0, "restart_epochs": 6},
        model={"in_size": 96}, options={"base_channels": 16},
    ),
    # Chosen by validation mIoU on a 2-core AMD EPYC (issue 15; see reports/reference/README.md):
    # class weights 1/1/1 beat the seed's 0.3/2.2/0.8 and the light augmentation beat the
    # seed's six transforms for the pretrained encoder. The fused AdamW step paid 1.00-1.24x
    # over foreach for every reference model on the idle EPYC (benchmarks/README.md), at the
    # cost of last-bit differences from the per-parameter step.
    "reference": Profile(
        "reference", "a 2-core CPU in about 2 hours for all models: full trainval, 160 px, 16 base channels, "
                     "15 epochs in one cosine cycle, class weights 1/1/1, light augmentation, unlabelled images "
                     "for mask-free phases; models add their own settings",
        train={"epochs": 15, "batch_size": 16, "lr": 1e-3, "restart_epochs": 15, "patience": 0, "unlabelled": "auto",
               "class_weights": (1.0, 1.0, 1.0), "augment": "light", "optimizer_impl": "fused"},
        model={"in_size": 160}, options={"base_channels": 16},
    ),
}


def resolve(profile: str, train_overrides: dict[str, Any], model_overrides: dict[str, Any],
            spec=None) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig and generic model-config fields for ``profile`` with explicit options
    on top (None means "not given"). A model ``spec`` may set its own generic and training
    fields per profile (``ModelSpec.profiles``): they sit between the profile's and the explicit ones.
    The profile's model options (``Profile.options``) are the spec's to apply:
    ``spec.config(fields, options, profile)``."""
    if profile not in PROFILES:
        raise PetsegError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    p = PROFILES[profile]
    own = spec.profile_fields(profile) if spec is not None else {}
    own_train = spec.profile_train(profile) if spec is not None else {}
    given = {k: v for k, v in train_overrides.items() if v is not None}
    train = {**p.train, **own_train, **given}
    if train.get("phase_epochs") is not None and "epochs" not in given:
        train["epochs"] = sum(train["phase_epochs"])  # the per-phase split sets the total
    elif "epochs" in given and "phase_epochs" not in given:
        train.pop("phase_epochs", None)  # an explicit total: the model's fractions split it
    model = {**p.model, **own, **{k: v for k, v in model_overrides.items() if v is not None}}
    cfg = TrainConfig.from_dict(train)
    cfg.validate()
    return cfg, model
