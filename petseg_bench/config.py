"""Training configuration and profiles (data, not code paths)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .errors import PetsegError

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
AUGMENTATIONS = ("seed", "light", "none")  # petseg_bench.data.augment's names (imports albumentations)
SCHEDULERS = ("cosine", "none")


@dataclass
class TrainConfig:
    """Every knob of the one training loop; stored in each checkpoint."""

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    scheduler: str = "cosine"  # CosineAnnealingWarmRestarts, restarting every `restart_epochs`
    restart_epochs: int = 10
    class_weights: tuple[float, float, float] = (0.3, 2.2, 0.8)
    val_fraction: float = 0.1
    ce_weight: float | None = None  # None: the model's own default
    dice_weight: float | None = None
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    precision: str = "auto"
    device: str = "auto"
    patience: int = 10  # epochs without a better validation mIoU before stopping; 0 disables
    seed: int = 0
    limit: int | None = None  # train on a fixed seeded subset of this many trainval images
    val_limit: int | None = None
    workers: int = 1
    void: str = "nearest"
    augment: str = "seed"  # see petseg_bench.data.augment: seed, light or none
    salt_pepper: float = 0.0  # probability of salt-and-pepper training noise per image
    #: Extra images without masks for phases that need none (reconstruction): a folder
    #: with images/ and labels.csv, or "auto" for ``<data root>-unlabelled`` where it exists.
    unlabelled: str | None = None
    #: Epochs per training phase (e.g. (8, 32) for a reconstruction and a
    #: segmentation phase), overriding the model's phase fractions; ``epochs`` is their sum.
    phase_epochs: tuple[int, ...] | None = None

    def validate(self) -> None:
        def bad(option: str, why: str) -> PetsegError:
            return PetsegError(f"--{option.replace('_', '-')} {why}")

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
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise bad("scheduler", f"must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
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
        if self.augment not in AUGMENTATIONS:
            raise bad("augment", f"must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if not 0.0 <= self.salt_pepper <= 1.0:
            raise bad("salt_pepper", f"must be a probability within 0..1, got {self.salt_pepper}")
        if self.workers < 0:
            raise bad("workers", f"must be >= 0, got {self.workers}")
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


#: Seeds feed numpy, torch and per-image generators: 0 .. 2**32 - 1 works for all of them.
MAX_SEED = 2**32 - 1


def check_seed(seed: int, option: str = "--seed") -> None:
    if not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise PetsegError(f"{option} must be between 0 and {MAX_SEED}, got {seed}")


@dataclass(frozen=True)
class Profile:
    """Named defaults for the training loop and the generic model fields; explicit options
    win. A model's own options per profile live on its spec (``ModelSpec.profiles``)."""

    name: str
    description: str
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        "paper", "the seed study's settings: 256 px, 64 base channels, 100 epochs, batch 16",
        train={"epochs": 100, "batch_size": 16, "lr": 1e-4, "patience": 10},
        model={"in_size": 256, "base_channels": 64},
    ),
    "quick": Profile(
        "quick", "CPU minutes: 96 px, 16 base channels, 400 training images, 12 epochs, lr 1e-3",
        train={"epochs": 12, "batch_size": 16, "lr": 1e-3, "limit": 400, "val_limit": 60,
               "patience": 0, "restart_epochs": 6},
        model={"in_size": 96, "base_channels": 16},
    ),
    # Chosen by validation mIoU on a 2-core AMD EPYC (issue 15; see reports/reference/README.md):
    # class weights 1/1/1 beat the seed's 0.3/2.2/0.8 and the light augmentation beat the
    # seed's six transforms for the pretrained encoder.
    "reference": Profile(
        "reference", "a 2-core CPU in about 2 hours for all models: full trainval, 160 px, 16 base channels, "
                     "15 epochs in one cosine cycle, class weights 1/1/1, light augmentation, unlabelled images "
                     "for mask-free phases; models add their own settings",
        train={"epochs": 15, "batch_size": 16, "lr": 1e-3, "restart_epochs": 15, "patience": 0, "unlabelled": "auto",
               "class_weights": (1.0, 1.0, 1.0), "augment": "light"},
        model={"in_size": 160, "base_channels": 16},
    ),
}


def resolve(profile: str, train_overrides: dict[str, Any], model_overrides: dict[str, Any],
            spec=None) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig and generic model-config fields for ``profile`` with explicit options
    on top (None means "not given"). A model ``spec`` may set its own generic and training
    fields per profile (``ModelSpec.profiles``): they sit between the profile's and the explicit ones."""
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
