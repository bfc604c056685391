"""Typed plugin specs: what a model, backbone, perturbation or metric plugin hands over.

Plugins return these from the hooks in :mod:`petseg_bench.hookspecs`. The harness
validates each one (its ``validate()``) and skips, with a one-line message, any that is
malformed, so one broken plugin never takes the others down. Everything the core needs
to know about a model (its inputs, preprocessing, options, frozen parts, published
figures, display label) is data here: the core never names a model.

Every field is documented by the ``#:`` comment above it (the form Sphinx's autodoc
reads); what the engine does with a spec at run time (threads, autocast, channels_last,
compilation, padded batches, BatchNorm folding, phases) is each hook's "Runs under"
section in :mod:`petseg_bench.hookspecs`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

if TYPE_CHECKING:  # torch and numpy stay out of import time for `petseg-bench list`
    import numpy as np
    import torch

NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")

#: Inputs a model's ``forward`` may take as keyword arguments:
#: ``image``: the RGB image letterboxed to ``in_size`` and normalised with the spec's mean/std;
#: ``point``: one click per image, ``[B, 2]`` int64 (y, x) in input pixels (placed on the
#: ground-truth foreground: at random in training, by a fixed rule in evaluation);
#: ``backbone``: the :class:`~petseg_bench.backbones.Features` of the model's frozen
#: backbone (see ``ModelSpec.backbone_option``), computed once per batch by the harness.
MODEL_INPUTS = ("image", "point", "backbone")

#: Losses a training phase may use: ``segmentation`` (class logits ``[B, C, H, W]``
#: against the masks), ``reconstruction`` (an image, MSE against the input) and
#: ``species`` (``[B, 2]`` cat/dog logits, cross-entropy against each image's species).
#: The mask-free phases also train on the unlabelled images (``--unlabelled``).
PHASE_LOSSES = ("segmentation", "reconstruction", "species")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: A published figure: a number, a (low, high) range, or None where none was published.
Figure = Union[float, tuple[float, float], None]


def _error(message: str) -> Exception:
    from .errors import PetsegError

    return PetsegError(message)


@dataclass
class ModelConfig:
    """Hyper-parameters of one model instance; stored in every checkpoint.

    The fields are what every model shares; a model's own settings live in ``options``
    (declared by its spec as :class:`ModelOption`, validated by its plugin).
    """

    #: Side of the square every image is letterboxed to (a positive multiple of 16): the
    #: size ``S`` of the ``image`` input and of the logits.
    in_size: int = 256
    #: Classes of the logits: 3 (background, cat, dog).
    n_classes: int = 3
    #: The model's own settings by name: its spec's :class:`ModelOption` values, resolved
    #: and checked by :meth:`ModelSpec.resolve_options`.
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.in_size < 16 or self.in_size % 16:
            raise _error(f"in_size must be a positive multiple of 16, got {self.in_size}")

    def opt(self, name: str) -> Any:
        """The value of the model option ``name`` (KeyError names it when absent)."""
        return self.options[name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _error(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**dict(data))


GENERIC_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "options")
#: Fields of format-2 checkpoints' model configs that became options of the models that
#: use them (a channel width and a dropout rate): loading moves them into the options.
FORMER_FIELDS = ("base_channels", "dropout")


@dataclass(frozen=True)
class ModelOption:
    """One model-specific setting: ``--model-opt name=value`` on the command line.

    The value's type is the default's (bool, int, float or str); ``choices`` limits it;
    ``flag`` adds a command-line shorthand (``--latent-dim 256``) to ``train``.
    """

    #: The option's name: the key in ``ModelConfig.options`` and of ``--model-opt name=value``.
    name: str
    #: The default value; its type (bool, int, float or str; str for None) is the option's.
    default: Any
    #: One line saying what the option does.
    help: str = ""
    #: None, or the only values allowed.
    choices: tuple[Any, ...] | None = None
    #: None, or a ``train`` shorthand: ``"--latent-dim"`` takes a value; for a bool,
    #: ``"--on/--off"`` sets True with the first and False with the second.
    flag: str | None = None

    def parse(self, text: Any) -> Any:
        """``text`` (a string from the command line, or a value) as this option's type
        (a None default takes strings)."""
        kind = str if self.default is None else type(self.default)
        if isinstance(text, str) and kind is not str:
            low = text.strip().lower()
            try:
                if kind is bool:
                    if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError
                    value: Any = low in ("1", "true", "yes", "on")
                else:
                    value = kind(text)
            except ValueError:
                raise _error(f"model option {self.name}: {text!r} is not a {kind.__name__} value") from None
        else:
            value = float(text) if kind is float and type(text) is int else text
            if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
                raise _error(f"model option {self.name}: expected a {kind.__name__} value, got {value!r}")
        if kind is float and not math.isfinite(value):  # nan/inf compare false with every bound
            raise _error(f"model option {self.name}: needs a finite number, got {text!r}")
        if self.choices is not None and value not in self.choices:
            raise _error(f"model option {self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value


@dataclass(frozen=True)
class LossWeights:
    """Total segmentation loss = ce * weighted cross-entropy + dice * soft Dice loss."""

    #: Weight of the class-weighted cross-entropy (``train --ce-weight`` overrides it).
    ce: float = 1.0
    #: Weight of the soft Dice loss (``train --dice-weight`` overrides it).
    dice: float = 1.0


@dataclass(frozen=True)
class Phase:
    """One training phase. ``epochs_fraction`` of the epoch budget goes to it.

    Before a phase starts the harness calls ``model.set_phase(name)`` when the model
    has more than one phase; the model then returns what that phase's loss needs
    (class logits for ``segmentation``, an image for ``reconstruction``, cat/dog logits
    for ``species``).
    """

    #: The phase's name: what ``model.set_phase`` gets and the training log shows.
    name: str
    #: The loss it trains, one of :data:`PHASE_LOSSES`.
    loss: str = "segmentation"
    #: Its share of the epoch budget, in (0, 1]; each phase gets at least one epoch.
    epochs_fraction: float = 1.0


@dataclass(frozen=True)
class PaperFigures:
    """What the seed study published for a model, shown beside this package's results."""

    #: The seed's name for the model (reports give it where it differs from the label).
    label: str
    #: Test mIoU, Dice and pixel accuracy, each a :data:`Figure`.
    table1: tuple[Figure, Figure, Figure]
    #: Per-class IoU (background, cat, dog), or None where not published.
    table2: tuple[float, float, float] | None = None
    #: How the paper's figures were obtained where it matters (e.g. a pretrained encoder).
    conditions: str = ""
    #: The seed's robustness findings for the model, in words.
    robustness: str = ""


def _train_fields() -> frozenset[str]:
    from .config import TrainConfig

    return frozenset(f.name for f in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class ModelSpec:
    """A model family a plugin offers.

    How the engine builds, loads, trains and calls the model (threads, autocast,
    channels_last, compilation, padded batches, BatchNorm folding, phases) is the
    "Runs under" section of :func:`petseg_bench.hookspecs.petseg_bench_models`.
    """

    #: The model's name (lower-case letters, digits, ``_`` or ``-``): what commands,
    #: checkpoint folders (``OUT/<name>/best.pt``) and cells call it.
    name: str
    #: ``build(config) -> torch.nn.Module``: a fresh model for a :class:`ModelConfig`, in
    #: its final (segmentation) phase. Its ``forward`` takes the ``inputs`` as keyword
    #: arguments and returns logits ``[B, n_classes, S, S]`` at the input size.
    build: Callable[[ModelConfig], "torch.nn.Module"]
    #: One line for ``petseg-bench list``.
    description: str = ""
    #: The name reports, plots and the app show (``name`` when empty).
    label: str = ""
    #: The keyword arguments ``forward`` takes, from :data:`MODEL_INPUTS`; always ``image``.
    inputs: tuple[str, ...] = ("image",)
    #: Per-channel RGB mean the ``image`` input is normalised with (pixels in 0..1).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    #: Per-channel RGB standard deviation of that normalisation.
    std: tuple[float, float, float] = IMAGENET_STD
    #: Weights of cross-entropy and Dice in the segmentation loss.
    loss: LossWeights = LossWeights()
    #: Training phases in order, the last one training ``segmentation``; with more than
    #: one, ``model.set_phase(name)`` switches the model between them (see :class:`Phase`).
    phases: tuple[Phase, ...] = (Phase("segment"),)
    #: Generic config fields (:data:`GENERIC_FIELDS`) for the model: a training profile,
    #: ``profiles`` and the command line set them over these.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: The model's own settings (``--model-opt name=value`` or a shorthand flag), kept in
    #: ``ModelConfig.options``; ``petseg-bench list`` shows them with their defaults.
    options: tuple[ModelOption, ...] = ()
    #: ``prepare_options(options) -> options``: normalise and cross-check the resolved
    #: options, raising ValueError with one line; also run on a checkpoint's options.
    prepare_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: Per training profile (``{"quick": {...}}``): option values, generic fields such as
    #: ``in_size`` and training fields such as ``epochs``, over the profile's own values and
    #: under the command line: a profile's budget is split per model.
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The option holding the key of a frozen backbone (``efficientnet:lite0``) whose
    #: features the harness computes and passes as ``backbone``; given exactly when
    #: ``inputs`` has ``backbone``.
    backbone_option: str | None = None
    #: State-dict prefixes that ``build`` rebuilds from their source (e.g. a pretrained
    #: part kept fixed): left out of checkpoints and not expected when one is loaded.
    frozen: tuple[str, ...] = ()
    #: ``upgrade(options) -> options``: maps the flat settings of a format-1 checkpoint to
    #: today's options (before they are resolved and checked).
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: What the seed study published for the model, shown beside its results (None: not
    #: one of the seed's models).
    paper: PaperFigures | None = None
    #: Learning-rate multipliers by parameter-name prefix (``{"encoder.": 0.3}``: a
    #: pretrained encoder fine-tuned more gently than a fresh decoder); the first match wins.
    lr_scales: Mapping[str, float] = field(default_factory=dict)
    #: ``encoder_label(options) -> str``: names a pretrained encoder the model holds and
    #: fine-tunes (``"EfficientNet-Lite1 (ImageNet)"``); reports print it beside the
    #: model's label, as they print a frozen backbone's.
    encoder_label: Callable[[Mapping[str, Any]], str] | None = None
    #: The reference model: the plain baseline corruption errors (CE, mCE) are normalised
    #: by unless a report names another. One installed model declares it.
    reference: bool = False

    @property
    def display(self) -> str:
        return self.label or self.name

    def option(self, name: str) -> ModelOption:
        for opt in self.options:
            if opt.name == name:
                return opt
        known = ", ".join(o.name for o in self.options) or "none"
        raise _error(f"model {self.name} has no option {name!r} (its options: {known})")

    def profile_fields(self, profile: str | None) -> dict[str, Any]:
        """The generic config fields (e.g. ``in_size``) the model sets for ``profile``."""
        return {k: v for k, v in self.profiles.get(profile or "", {}).items() if k in GENERIC_FIELDS}

    def profile_train(self, profile: str | None) -> dict[str, Any]:
        """The training fields (e.g. ``epochs``) the model sets for ``profile``."""
        return {k: v for k, v in self.profiles.get(profile or "", {}).items() if k in _train_fields()}

    def resolve_options(self, given: Mapping[str, Any], profile: str | None = None) -> dict[str, Any]:
        """Defaults, then the training profile's values of options this model declares
        (``Profile.options``, e.g. ``base_channels``), then the model's own overrides for
        the profile, then ``given`` (None values ignored), each parsed to its option's
        type and checked by ``prepare_options``."""
        from .config import PROFILES

        values = {o.name: o.default for o in self.options}
        shared = {k: v for k, v in (PROFILES[profile].options if profile in PROFILES else {}).items() if k in values}
        own = {k: v for k, v in self.profiles.get(profile or "", {}).items()
               if k not in GENERIC_FIELDS and k not in _train_fields()}
        layers = [shared, own, {k: v for k, v in given.items() if v is not None}]
        for layer in layers:
            for name, value in layer.items():
                values[name] = self.option(name).parse(value)
        if self.prepare_options is not None:
            try:
                values = dict(self.prepare_options(dict(values)))
            except ValueError as exc:
                raise _error(f"model {self.name}: {exc}") from None
        return values

    def config(self, generic: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
               profile: str | None = None) -> ModelConfig:
        """The model's config: its defaults with ``generic`` fields and ``options`` on top
        (a former field such as ``base_channels`` among ``generic`` counts as an option
        where the model declares one of that name)."""
        fields = {**self.defaults, **{k: v for k, v in (generic or {}).items() if v is not None}}
        declared = {o.name for o in self.options}
        moved = {k: fields.pop(k) for k in FORMER_FIELDS if k in fields and k in declared}
        unknown = sorted(set(fields) - set(GENERIC_FIELDS))
        if unknown:
            raise _error(f"unknown model config field(s): {', '.join(unknown)}")
        cfg = ModelConfig(**fields, options=self.resolve_options({**moved, **(options or {})}, profile))
        cfg.validate()
        return cfg

    def encoder_name(self, config: ModelConfig) -> str | None:
        """What the model's own pretrained encoder is (its ``encoder_label``), if it has one."""
        return None if self.encoder_label is None else str(self.encoder_label(config.options))

    def backbone_key(self, config: ModelConfig) -> str | None:
        """The key of the frozen backbone this model instance uses, if any."""
        return None if self.backbone_option is None else str(config.options[self.backbone_option])

    def validate(self) -> None:
        _check_name(self.name)
        if not callable(self.build):
            raise ValueError("build is not callable")
        bad = [i for i in self.inputs if i not in MODEL_INPUTS]
        if bad or "image" not in self.inputs:
            raise ValueError(f"inputs must include 'image' and come from {MODEL_INPUTS}, got {self.inputs}")
        if ("backbone" in self.inputs) != (self.backbone_option is not None):
            raise ValueError("a model takes the 'backbone' input exactly when it names a backbone_option")
        if self.backbone_option is not None and self.backbone_option not in {o.name for o in self.options}:
            raise ValueError(f"backbone_option {self.backbone_option!r} is not one of its options")
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
        unknown = sorted(set(self.defaults) - set(GENERIC_FIELDS))
        if unknown:
            raise ValueError(f"defaults name unknown config fields: {', '.join(unknown)}")
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError("option names repeat")
        for profile, values in self.profiles.items():
            missing = sorted(set(values) - set(names) - set(GENERIC_FIELDS) - _train_fields())
            if missing:
                raise ValueError(f"profile {profile!r} sets unknown options: {', '.join(missing)}")


@dataclass(frozen=True)
class BackboneSpec:
    """A family of frozen feature extractors, chosen by key ``<name>:<argument>``.

    How the engine builds and runs it is the "Runs under" section of
    :func:`petseg_bench.hookspecs.petseg_bench_backbones`.
    """

    #: The family's name, the part of a key before the first ``:`` (so it has none).
    name: str
    #: ``build(argument) -> Backbone``: the :class:`~petseg_bench.backbones.Backbone` for
    #: the rest of the key (an ``nn.Module`` declaring its preprocessing and outputs).
    build: Callable[[str], "torch.nn.Module"]
    #: One line for ``petseg-bench list``.
    description: str = ""
    #: A full key ``petseg-bench list`` shows as an example (``efficientnet:lite0``).
    example: str = ""

    def validate(self) -> None:
        _check_name(self.name)
        if ":" in self.name:
            raise ValueError("a backbone name may not contain ':'")
        if not callable(self.build):
            raise ValueError("build is not callable")


#: ``apply(images, value, rngs)``: a list of uint8 HxWx3 arrays (sizes may differ), the
#: level's parameter value, one generator per image; returns new uint8 arrays of the
#: same shapes. It must be deterministic for given generators and never modify inputs.
ApplyFn = Callable[[Sequence["np.ndarray"], float, Sequence["np.random.Generator"]], list["np.ndarray"]]
#: ``apply_clicks(clicks, labels, value, rngs) -> clicks``: see :class:`PerturbationSpec`.
ApplyClicksFn = Callable[["np.ndarray", Sequence["np.ndarray"], float, Sequence["np.random.Generator"]], "np.ndarray"]

#: ``attack(forward, images, labels, value, rngs) -> images``: see :class:`PerturbationSpec`
#: (``attack``) and :mod:`petseg_bench.engine.attack`.
AttackFn = Callable[[Callable[["torch.Tensor"], "torch.Tensor"], "torch.Tensor", "torch.Tensor", float,
                     Sequence["np.random.Generator"]], "torch.Tensor"]

#: What a perturbation acts on: ``pixels`` (every model), ``clicks`` (models with a
#: ``point`` input only; for the others its cells are not computed and reports show n/a)
#: or ``model`` (an attack computed per model from its own gradient, every model).
PERTURBATION_TARGETS = ("pixels", "clicks", "model")


@dataclass(frozen=True)
class PerturbationSpec:
    """An image corruption with ordered severity levels; level 0 must be the identity.

    How the engine calls ``apply`` and ``apply_clicks`` (several threads at once over
    sub-batches, one generator per image, read-only inputs) is the "Runs under" section
    of :func:`petseg_bench.hookspecs.petseg_bench_perturbations`.
    """

    #: The perturbation's name (lower-case letters, digits, ``_`` or ``-``); its cells are
    #: ``<name>-L<level>``.
    name: str
    #: What the level values mean, e.g. ``"std"``, ``"iterations"``, ``"factor"``.
    param: str
    #: The parameter value of each severity level, level 0 (the clean image, never passed
    #: to ``apply``) first. run.json records them: changed values make old cells stale.
    levels: tuple[float, ...]
    #: ``apply(images, value, rngs) -> images``: see :data:`ApplyFn`.
    apply: ApplyFn
    #: One line for ``petseg-bench list``.
    description: str = ""
    #: None, or one line saying why it cannot run here and how to fix it (e.g. an optional
    #: library not installed). Such a spec is listed, left out of ``all`` and wildcards,
    #: and asking for it by name gives that line.
    unavailable: str | None = None
    #: ``"pixels"`` (``apply`` corrupts the images) or ``"clicks"``: the perturbation moves
    #: the evaluation click of point-prompted models through ``apply_clicks``. The harness
    #: applies the move as a displacement (new - old, in original pixels, scaled into the
    #: letterbox) to the click the model gets, so level 0 and the pixel perturbations keep
    #: exactly the clicks they always had. A click perturbation's ``apply`` still runs on
    #: the pixels (use an identity to leave them clean). Its cells exist only for models
    #: with a ``point`` input. ``"model"``: an adversarial attack (``attack``), computed
    #: per model from that model's gradient; its cells exist for every model.
    target: str = "pixels"
    #: ``apply_clicks(clicks, labels, value, rngs) -> clicks``, given exactly when
    #: ``target`` is ``"clicks"``: ``clicks`` an int array ``[B, 2]`` of (y, x) in ORIGINAL
    #: image pixels (the evaluation rule's click, see :mod:`petseg_bench.data.points`),
    #: ``labels`` the ground-truth masks at original resolution (0 background, 1 cat,
    #: 2 dog, 255 void), ``rngs`` one generator per image; it returns ``[B, 2]`` clicks
    #: inside each image, deterministic for given generators.
    apply_clicks: ApplyClicksFn | None = None
    #: None, or the id of the corruption family the perturbation belongs to, e.g. one
    #: benchmark's standard set (lower-case letters, digits, ``_`` or ``-``). Corruption
    #: errors are averaged per family: a run whose pixel perturbations span several
    #: families (perturbations with no family count as one more group) gets an mCE and a
    #: relative mCE per family, and none over the whole run, since a mean over two
    #: benchmarks' corruptions is neither's figure. A plugin keeps held-out corruptions
    #: out of a family's mean by giving them a family of their own.
    family: str | None = None
    #: The family's display name (the id when empty; one line, at most 80 characters).
    family_label: str = ""
    #: ``attack(forward, images, labels, value, rngs) -> images``, given exactly when
    #: ``target`` is ``"model"``: an adversarial perturbation computed per model, on the
    #: image that model sees. ``images``: float32 ``[B, 3, S, S]``, the letterboxed batch
    #: in pixel values 0..255 (before the model's mean/std; a copy, free to modify);
    #: ``forward(x) -> logits``: the model's forward on such a batch, float32
    #: ``[B, C, S, S]``, differentiable with respect to ``x`` (fp32, through a frozen
    #: backbone; a point model's click fixed); ``labels``: int64 ``[B, S, S]``, the ground
    #: truth at that resolution, 255 where nothing is scored (void, and the letterbox's
    #: padding: leave it out of the loss); ``value``: the level's value; ``rngs``: one
    #: generator per image, seeded by (run seed, perturbation, level, image, model). It
    #: returns float images of the same shape within 0..255, each depending only on its
    #: own image, label, generator and the model. Such a spec is left out of ``all``
    #: (name it, or a wildcard such as ``adv_*``): an attack costs many forward and
    #: backward passes per image and model. Its ``apply`` still runs on the pixels first
    #: (use an identity).
    attack: AttackFn | None = None

    @property
    def acts_on_clicks(self) -> bool:
        return self.target == "clicks"

    @property
    def acts_on_model(self) -> bool:
        return self.target == "model"

    def validate(self) -> None:
        _check_name(self.name)
        if len(self.levels) < 2:
            raise ValueError("needs at least two levels (level 0 is the clean image)")
        if not callable(self.apply):
            raise ValueError("apply is not callable")
        if self.target not in PERTURBATION_TARGETS:
            raise ValueError(f"target {self.target!r} is not one of {', '.join(PERTURBATION_TARGETS)}")
        if self.target == "clicks" and not callable(self.apply_clicks):
            raise ValueError("target 'clicks' needs a callable apply_clicks")
        if self.target != "clicks" and self.apply_clicks is not None:
            raise ValueError(f"apply_clicks is given but target is {self.target!r} (set target='clicks')")
        if self.target == "model" and not callable(self.attack):
            raise ValueError("target 'model' needs a callable attack")
        if self.target != "model" and self.attack is not None:
            raise ValueError(f"attack is given but target is {self.target!r} (set target='model')")
        if self.family is not None and not (isinstance(self.family, str) and NAME_RE.match(self.family)):
            raise ValueError(f"family {self.family!r} must be lower-case letters, digits, '_' or '-'")
        if not isinstance(self.family_label, str) or "\n" in self.family_label or len(self.family_label) > 80:
            raise ValueError("family_label must be one line of at most 80 characters")
        if self.family_label and self.family is None:
            raise ValueError("family_label is given without a family")


@dataclass(frozen=True)
class MetricSpec:
    """A metric computed from confusion matrices.

    Which arrays ``fn`` gets and where its figures appear is the "Runs under" section of
    :func:`petseg_bench.hookspecs.petseg_bench_metrics`.
    """

    #: The metric's name: the key of its figures in ``evaluate``'s results.
    name: str
    #: ``fn(confusion)``: counts ``[..., C, C]`` (rows: ground truth, columns: prediction;
    #: integer, or float in bootstrap replicates) to ``[..., C]`` when ``per_class`` (NaN
    #: where the class is absent from the ground truth) or ``[...]`` otherwise.
    fn: Callable[["np.ndarray"], "np.ndarray"]
    #: Whether ``fn`` scores each class (the harness adds the class mean) or gives one number.
    per_class: bool
    #: Whether a larger value is better (``petseg-bench list`` says so).
    higher_is_better: bool = True
    #: One line for ``petseg-bench list``.
    description: str = ""

    def validate(self) -> None:
        _check_name(self.name)
        if not callable(self.fn):
            raise ValueError("fn is not callable")


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"name {name!r} must be lower-case letters, digits, '_' or '-'")
