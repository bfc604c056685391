"""Checkpoints: weights plus everything needed to rebuild, resume and trace a model.

One ``.pt`` file holding only tensors and plain data (dicts, lists, numbers, strings),
loaded with ``torch.load(weights_only=True)``: a file carrying pickled objects is
refused and nothing in it runs. Writes go to a temporary file that is renamed over the
old one, so a crash while saving never destroys the previous checkpoint.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import PetsegError, one_line

FORMAT = "petseg-bench-checkpoint"
#: 2: model-specific settings live in ``model_config["options"]``; 1 had them as flat fields.
FORMAT_VERSION = 2


def save(path: Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # disk full (torch says RuntimeError), permissions: the old file stays
        raise PetsegError(f"could not write checkpoint {path} ({one_line(exc, 160)}); the previous one is kept") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def load(path: Path, expect_model: str | None = None) -> dict[str, Any]:
    """The checkpoint's dict, or one clear line saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise PetsegError(f"checkpoint {path} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "WeightsUnpickler" in str(exc):
            raise PetsegError(f"checkpoint {path} holds pickled Python objects; refused "
                              "(only tensors and plain data are loaded)") from None
        raise PetsegError(f"checkpoint {path} is corrupt ({one_line(exc, 160)})") from None
    except Exception as exc:  # noqa: BLE001 - torch's readers raise many kinds (KeyError, RuntimeError, EOFError...)
        raise PetsegError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {one_line(exc, 160)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PetsegError(f"{path} is not a petseg-bench checkpoint")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise PetsegError(f"checkpoint {path} has format {data['format_version']}; this petseg-bench reads up to {FORMAT_VERSION}")
    if expect_model is not None and data.get("model") != expect_model:
        raise PetsegError(f"checkpoint {path} is for model {data.get('model')!r}, not {expect_model!r}")
    return data



def model_config(data: dict[str, Any], spec, path: Path):
    """The checkpoint's :class:`ModelConfig`, validated by the model's spec; a format-1
    config (model settings as flat fields) is upgraded on the way."""
    from ..specs import GENERIC_FIELDS, ModelConfig

    raw = dict(data.get("model_config") or {})
    options = dict(raw.pop("options", None) or {})
    generic = {k: raw.pop(k) for k in list(raw) if k in GENERIC_FIELDS}
    if data.get("format_version", 1) < 2:
        options.update(raw)  # every other format-1 field was a model setting
        if spec.upgrade is not None:
            options = spec.upgrade(options)
        declared = {o.name for o in spec.options}
        options = {k: v for k, v in options.items() if k in declared}
    elif raw:
        raise PetsegError(f"checkpoint {path} has unknown model config field(s): {', '.join(sorted(raw))}")
    try:
        return spec.config(generic, options)
    except PetsegError as exc:
        raise PetsegError(f"checkpoint {path}: {exc}") from None
