"""Typed plugin specs: what a model, perturbation or metric plugin hands to the harness.

Plugins return these from the hooks in :mod:`petseg_bench.hookspecs`. The harness
validates each one (:meth:`validate`) and skips, with a one-line message, any that is
malformed, so one broken plugin never takes the others down.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # torch and numpy stay out of import time for `petseg-bench list`
    import numpy as np
    import torch

NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")

#: Inputs a model may ask for. ``image``: ImageNet-normalised RGB letterboxed to
#: ``in_size``; ``point``: a one-channel Gaussian click heatmap at ``in_size``;
#: ``clip_image``: the RGB image in CLIP's own preprocessing (224 px).
MODEL_INPUTS = ("image", "point", "clip_image")

#: Losses a training phase may use.
PHASE_LOSSES = ("segmentation", "reconstruction")


@dataclass
class ModelConfig:
    """Hyper-parameters of one model instance; stored in every checkpoint.

    One dataclass serves every built-in model so that profiles and CLI options apply
    uniformly; fields a model does not use are ignored by it. Third-party models put
    their own settings in ``options``.
    """

    in_size: int = 256
    base_channels: int = 64
    n_classes: int = 3
    dropout: float = 0.0
    bilinear: bool = True
    fuse_clip: str = "add"  # "add" the projected CLIP tensor to the bottleneck, or "replace" it
    freeze_encoder: bool = False  # autoencoder stage 2: keep the pretrained encoder fixed
    latent_dim: int = 1024
    heatmap_sigma: float = 10.0
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"  # an open_clip tag, a local weights file, or "none"
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from .errors import PetsegError

        if self.in_size < 16 or self.in_size % 16:
            raise PetsegError(f"in_size must be a positive multiple of 16, got {self.in_size}")
        if self.base_channels < 1:
            raise PetsegError(f"base_channels must be >= 1, got {self.base_channels}")
        if not 0.0 <= self.dropout <= 1.0:
            raise PetsegError(f"dropout must be within 0..1, got {self.dropout}")
        if self.fuse_clip not in ("add", "replace"):
            raise PetsegError(f"fuse_clip must be 'add' or 'replace', got {self.fuse_clip!r}")
        if self.heatmap_sigma <= 0:
            raise PetsegError(f"heatmap_sigma must be > 0, got {self.heatmap_sigma}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            from .errors import PetsegError

            raise PetsegError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class LossWeights:
    """Total segmentation loss = ce * weighted cross-entropy + dice * soft Dice loss."""

    ce: float = 1.0
    dice: float = 1.0


@dataclass(frozen=True)
class Phase:
    """One training phase. ``epochs_fraction`` of the epoch budget goes to it.

    Before a phase starts the harness calls ``model.set_phase(name)`` when the model
    has more than one phase; the model then returns what that phase's loss needs
    (class logits for ``segmentation``, an image for ``reconstruction``).
    """

    name: str
    loss: str = "segmentation"
    epochs_fraction: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A model family a plugin offers.

    ``build(config)`` returns a ``torch.nn.Module`` whose ``forward`` takes the inputs
    named in ``inputs`` as keyword arguments and returns logits ``[B, n_classes, H, W]``
    at the input size.
    """

    name: str
    build: Callable[[ModelConfig], "torch.nn.Module"]
    description: str = ""
    inputs: tuple[str, ...] = ("image",)
    loss: LossWeights = LossWeights()
    phases: tuple[Phase, ...] = (Phase("segment"),)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> ModelConfig:
        """The model's default config, with ``overrides`` (None values ignored) on top."""
        values = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        return ModelConfig.from_dict(values)

    @property
    def uses_clip(self) -> bool:
        return "clip_image" in self.inputs

    def validate(self) -> None:
        _check_name(self.name)
        if not callable(self.build):
            raise ValueError("build is not callable")
        bad = [i for i in self.inputs if i not in MODEL_INPUTS]
        if bad or "image" not in self.inputs:
            raise ValueError(f"inputs must include 'image' and come from {MODEL_INPUTS}, got {self.inputs}")
        if not self.phases:
            raise ValueError("phases is empty")
        for phase in self.phases:
            if phase.loss not in PHASE_LOSSES:
                raise ValueError(f"phase {phase.name!r} has unknown loss {phase.loss!r}")
            if not 0 < phase.epochs_fraction <= 1:
                raise ValueError(f"phase {phase.name!r} epochs_fraction must be in (0, 1]")
        if self.phases[-1].loss != "segmentation":
            raise ValueError("the last phase must train segmentation")
        if self.loss.ce < 0 or self.loss.dice < 0 or self.loss.ce + self.loss.dice == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {self.loss}")
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(self.defaults) - known)
        if unknown:
            raise ValueError(f"defaults name unknown config fields: {', '.join(unknown)}")


#: ``apply(images, value, rngs)``: a list of uint8 HxWx3 arrays (sizes may differ), the
#: level's parameter value, one generator per image; returns new uint8 arrays of the
#: same shapes. It must be deterministic for given generators and never modify inputs.
ApplyFn = Callable[[Sequence["np.ndarray"], float, Sequence["np.random.Generator"]], list["np.ndarray"]]


@dataclass(frozen=True)
class PerturbationSpec:
    """An image corruption with ordered severity levels; level 0 must be the identity."""

    name: str
    param: str  # what the level values mean, e.g. "std", "iterations", "factor"
    levels: tuple[float, ...]
    apply: ApplyFn
    description: str = ""

    def validate(self) -> None:
        _check_name(self.name)
        if len(self.levels) < 2:
            raise ValueError("needs at least two levels (level 0 is the clean image)")
        if not callable(self.apply):
            raise ValueError("apply is not callable")


@dataclass(frozen=True)
class MetricSpec:
    """A metric computed from confusion matrices.

    ``fn(confusion)`` takes an integer array ``[..., C, C]`` (rows: ground truth,
    columns: prediction) and returns ``[..., C]`` when ``per_class`` (NaN where the
    class is absent from the ground truth) or ``[...]`` otherwise.
    """

    name: str
    fn: Callable[["np.ndarray"], "np.ndarray"]
    per_class: bool
    higher_is_better: bool = True
    description: str = ""

    def validate(self) -> None:
        _check_name(self.name)
        if not callable(self.fn):
            raise ValueError("fn is not callable")


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"name {name!r} must be lower-case letters, digits, '_' or '-'")
