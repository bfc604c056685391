"""Model families: models chosen by key ``<family>:<argument>``, like backbones.

A :class:`ModelFamilySpec` (hook ``petseg_bench_model_families``) turns the argument into
a :class:`~petseg_bench.specs.ModelSpec`: ``onnx:model.onnx``, ``torchscript:model.pt``,
``smp:Unet:resnet18``. The registry resolves such a key on first use
(:meth:`~petseg_bench.plugins.Registry.get`) and the model then trains, sweeps and
reports like any other; its name everywhere (run records, cells, reports) is the key.

Two kinds of family:

- trainable ones (``smp``): checkpoints as usual, in ``OUT/<folder>/best.pt`` where the
  folder is :func:`model_dirname` of the key (every ``:`` becomes ``+``, any other
  character outside ``A-Za-z0-9._-`` its ``%XX`` escape: ``checkpoints/smp+Unet+resnet18/``);
  the checkpoint records the key itself as its model. A run's cells of a key live in
  ``cells/<folder>/`` the same way.
- model files (``onnx``, ``torchscript``, ``ModelFamilySpec.model_file``): the argument
  is a file that *is* the trained model. It is evaluation-only, needs no checkpoint
  (``run`` records the file's sha256 where a checkpoint's would be) and ``evaluate FILE``
  takes it directly. What the file needs is read from its metadata (:data:`META_KEYS`,
  written by ``petseg-bench export``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import PetsegError

if TYPE_CHECKING:
    from .specs import ModelSpec

FAMILY_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")

#: Metadata a model file carries (ONNX ``metadata_props`` as ``petseg.<key>``; TorchScript
#: the extra file ``petseg.json``): the input size S the file takes (letterboxed
#: ``[N, 3, S, S]``), the normalisation (``x / 255`` then ``(x - mean) / std``, per
#: channel in ``channel_order``), the class order of its logits ``[N, 3, S, S]``, its
#: inputs (``image`` or ``image,point``: a click ``[N, 2]`` int64 (y, x) in input pixels),
#: and where it came from.
META_KEYS = ("in_size", "mean", "std", "channel_order", "classes", "inputs", "model", "label", "source")
#: What a model file must say (in its metadata, else as ``--model-opt``).
REQUIRED_META = ("in_size", "mean", "std", "classes")
CLASSES = ("background", "cat", "dog")
META_FILE = "petseg.json"


@dataclass(frozen=True)
class ModelFamilySpec:
    """A family of models chosen by key ``<name>:<argument>``.

    ``build(argument) -> ModelSpec``: the spec of that model (its ``name`` is replaced by
    the full key). ``model_file``: the argument names a file holding the trained model
    (evaluation only, no checkpoint). ``unavailable``: None, or one line saying why the
    family cannot run here and how to fix it (a missing optional package). ``example``:
    a full key shown by ``petseg-bench list``.
    """

    name: str
    build: Callable[[str], "ModelSpec"]
    description: str = ""
    example: str = ""
    model_file: bool = False
    unavailable: str | None = None

    def validate(self) -> None:
        if not isinstance(self.name, str) or not FAMILY_RE.match(self.name):
            raise ValueError(f"name {self.name!r} must be lower-case letters, digits, '_' or '-'")
        if not callable(self.build):
            raise ValueError("build is not callable")


def split_model_key(key: str) -> tuple[str, str] | None:
    """``family:argument`` -> (family, argument); None for a plain model name."""
    family, sep, arg = str(key).partition(":")
    if not sep or not FAMILY_RE.match(family):
        return None
    return family, arg


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def model_dirname(model: str) -> str:
    """The folder of a model's checkpoints (``OUT/<folder>/best.pt``) and of its cells in a
    run (``cells/<folder>/``): the name itself for a plain name; in a key every ``:``
    becomes ``+`` and every other character outside ``A-Za-z0-9._-`` its ``%XX`` UTF-8
    escape (``smp:Unet:resnet18`` -> ``smp+Unet+resnet18``, ``onnx:m/u.onnx`` ->
    ``onnx+m%2Fu.onnx``). Reversible: :func:`model_from_dirname`."""
    return "".join("+" if c == ":" else c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in str(model))


def model_from_dirname(name: str) -> str:
    """The model name a folder of :func:`model_dirname` stands for."""
    from urllib.parse import unquote

    return unquote(str(name).replace("+", ":"))


# --------------------------------------------------------------------------- model files


def sniff_model_file(path: Path) -> str | None:
    """``onnx`` or ``torchscript`` when ``path`` looks like one (by its suffix, or a
    TorchScript archive's ``code/`` folder), else None (a petseg-bench checkpoint)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    return "torchscript" if any("/code/" in n for n in names) else None


def file_config(spec: "ModelSpec", given: Mapping[str, Any]):
    """A model file's config: its options (metadata, then ``given``), ``in_size`` among them."""
    config = spec.config({}, dict(given))
    config.in_size = int(config.options["in_size"])
    config.validate()
    return config


def parse_floats(text: Any, what: str, n: int = 3) -> tuple[float, ...]:
    import math

    try:
        vals = tuple(float(v) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"{what} must be {n} comma-separated numbers, got {text!r}") from None
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what} must be {n} comma-separated finite numbers, got {text!r}")
    return vals


def class_permutation(text: str) -> list[int]:
    """Where each of background, cat, dog sits in the file's class order ``text``."""
    names = [c.strip().lower() for c in str(text).split(",")]
    if sorted(names) != sorted(CLASSES):
        raise ValueError(f"classes must name background, cat and dog once each, in the file's order, got {text!r}")
    return [names.index(c) for c in CLASSES]


def meta_to_strings(meta: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values as the strings model files store."""
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = ",".join(f"{x:.9g}" if isinstance(x, float) else str(x) for x in v) \
            if isinstance(v, (list, tuple)) else str(v)
    return out


def meta_from_json(text: str | bytes) -> dict[str, str]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def file_model_options(meta: Mapping[str, str], static_size: int | None):
    """The options of a model-file spec, each defaulting to what the file says."""
    from .specs import ModelOption

    size = meta.get("in_size") or static_size or 0
    return (
        ModelOption("in_size", int(size), "input size S the file takes ([N, 3, S, S]); 0: not known"),
        ModelOption("mean", meta.get("mean"), "normalisation mean, 3 numbers in channel order (x / 255 - mean) / std"),
        ModelOption("std", meta.get("std"), "normalisation std, 3 numbers"),
        ModelOption("channel_order", (meta.get("channel_order") or "RGB").upper(), "the file's channel order",
                    ("RGB", "BGR")),
        ModelOption("classes", meta.get("classes"), "its logits' class order, e.g. background,cat,dog"),
    )


def check_file_options(key: str, fix: str) -> Callable[[dict], dict]:
    """``prepare_options`` of a model-file spec: one line naming what is missing or wrong."""

    def prepare(options: dict) -> dict:
        missing = [k for k in REQUIRED_META if options.get(k) in (None, "", 0)]
        if missing:
            raise ValueError(f"the file does not say its {', '.join(missing)} (no petseg metadata): {fix}")
        parse_floats(options["mean"], "mean")
        if min(parse_floats(options["std"], "std")) <= 0:
            raise ValueError(f"std must be > 0, got {options['std']!r}")
        class_permutation(options["classes"])
        if options["in_size"] < 16 or options["in_size"] % 16:
            raise ValueError(f"in_size must be a positive multiple of 16, got {options['in_size']}")
        return options

    return prepare


def tag_fix(key: str) -> str:
    family, path = split_model_key(key)
    return (f"write them into a copy with `petseg-bench export {path} --format {family} --out TAGGED "
            f"--model-opt in_size=256 --model-opt mean=0.485,0.456,0.406 --model-opt std=0.229,0.224,0.225 "
            f"--model-opt classes=background,cat,dog`")


def renormaliser(spec_mean, spec_std, options: Mapping[str, Any]):
    """(scale, shift, flip, perm) turning the harness's input (normalised with the spec's
    mean/std) into the file's (its mean/std and channel order), and its logits back into
    background, cat, dog order; scale/shift None when nothing changes."""
    import torch

    mean, std = parse_floats(options["mean"], "mean"), parse_floats(options["std"], "std")
    flip = options["channel_order"] == "BGR"
    if flip:  # the file's mean/std are per its (BGR) channels
        mean, std = mean[::-1], std[::-1]
    perm = class_permutation(options["classes"])
    if tuple(mean) == tuple(spec_mean) and tuple(std) == tuple(spec_std):
        return None, None, flip, perm
    # x_file = (x01 - m) / s, x01 = x * S + M  ->  x * (S / s) + (M - m) / s
    s_ = torch.tensor(spec_std) / torch.tensor(std)
    b_ = (torch.tensor(spec_mean) - torch.tensor(mean)) / torch.tensor(std)
    return s_.view(1, 3, 1, 1), b_.view(1, 3, 1, 1), flip, perm


def spec_norm(meta: Mapping[str, str]) -> tuple[tuple, tuple]:
    """The mean/std the harness normalises with: the file's (RGB order), else ImageNet's."""
    from .specs import IMAGENET_MEAN, IMAGENET_STD

    try:
        mean, std = parse_floats(meta["mean"], "mean"), parse_floats(meta["std"], "std")
    except (KeyError, ValueError):
        return IMAGENET_MEAN, IMAGENET_STD
    if (meta.get("channel_order") or "RGB").upper() == "BGR":
        mean, std = mean[::-1], std[::-1]
    return mean, std


def model_file(key: str, argument: str) -> Path:
    """The file a model-file key names; one line when there is none."""
    path = Path(argument)
    if not argument or not path.is_file():
        raise PetsegError(f"{key}: no such file")
    return path


def model_file_spec(key: str, path: Path, meta: Mapping[str, str], inputs: tuple[str, ...],
                    static_size: int | None, kind: str, make: Callable) -> "ModelSpec":
    """The spec of a model file: label, inputs, normalisation and options from its
    metadata; ``make(config, mean, std)`` builds the module that runs it."""
    from .specs import ModelSpec

    mean, std = spec_norm(meta)
    return ModelSpec(
        name=key.partition(":")[0],
        label=f"{meta['label']} ({kind} {path.name})" if meta.get("label") else key,
        build=lambda config: make(config, mean, std),
        description=f"{kind} model {path}",
        inputs=inputs,
        mean=mean,
        std=std,
        options=file_model_options(meta, static_size),
        prepare_options=check_file_options(key, tag_fix(key)),
    )
