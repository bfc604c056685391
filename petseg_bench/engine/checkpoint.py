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

from ..errors import PetsegError, one_line, os_error_text

FORMAT = "petseg-bench-checkpoint"
#: 3: base_channels and dropout are options of the models that use them (2 had them as
#: generic fields); 2: model-specific settings live in ``model_config["options"]``; 1 had
#: them as flat fields.
FORMAT_VERSION = 3


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically. Weights that are not finite are refused: a diverged
    model never replaces a good checkpoint."""
    path = Path(path)
    bad = nonfinite(payload.get("state_dict"))
    if bad[0]:
        kept = "the previous one is kept" if path.exists() else "nothing was written"
        raise PetsegError(f"refused to write checkpoint {path}: {describe_nonfinite(bad)}; {kept}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # disk full (torch says RuntimeError), permissions: the old file stays
        kept = "the previous one is kept" if path.exists() else "nothing was written"
        raise PetsegError(f"could not write checkpoint {path}: {os_error_text(exc)}; {kept}") from None
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def nonfinite(state: Any) -> tuple[int, int, list[str]]:
    """(non-finite values, all values, names of the tensors holding them) of a state dict;
    ``(0, n, [])`` when every floating-point value is finite."""
    if not isinstance(state, dict):
        return 0, 0, []
    bad, total, names = 0, 0, []
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.dtype in _FLOATS:
            total += t.numel()
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad, names = bad + n, names + [name]
    return (bad, total, names) if bad else (0, total, [])


def describe_nonfinite(found: tuple[int, int, list[str]]) -> str:
    bad, total, names = found
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    return (f"{bad} of {total} weight values are not finite (NaN or inf), in {', '.join(names[:2])}{more}")


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
    check_structure(data, path)
    if expect_model is not None and data.get("model") != expect_model:
        raise PetsegError(f"checkpoint {path} holds model {data.get('model')!r}, not {expect_model!r} "
                          f"(a checkpoint of another model copied into {expect_model}'s place?)")
    return data


def folder_model(path: Path) -> str | None:
    """The model a checkpoint's folder claims (``OUT/<model>/best.pt``): the folder's name
    when it is an installed model's, else None."""
    from ..plugins import get_registry

    name = Path(path).parent.name
    return name if name in get_registry().table("model") else None


def check_dtypes(state: dict[str, Any], expected: dict[str, Any], path: Path, model: str) -> None:
    """Every stored tensor of the kind the model holds there: a float weight stored as
    integers (or the reverse) would be cast silently by ``load_state_dict``."""
    for name, want in expected.items():
        got = state.get(name)
        if isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor) and got.dtype != want.dtype:
            if got.dtype not in _FLOATS or want.dtype not in _FLOATS:  # float widths may differ (bf16 saved)
                raise PetsegError(f"checkpoint {path} does not fit model {model}: {name} is {_kind(got.dtype)}, "
                                  f"the model holds {_kind(want.dtype)} there")


def _kind(dtype: torch.dtype) -> str:
    return f"{'floating-point' if dtype in _FLOATS else 'non-float'} ({str(dtype).replace('torch.', '')})"


#: What each field of a checkpoint must be (None is allowed where a field is optional).
FIELD_TYPES = {"model": str, "model_config": dict, "state_dict": dict, "train_config": dict, "loop": dict,
               "val": dict, "epoch": int, "data_fingerprint": str, "optimizer": dict, "scheduler": dict,
               "rng": torch.Tensor}
REQUIRED = ("model", "state_dict")


def check_structure(data: dict[str, Any], path: Path) -> None:
    """One line naming the file when a field is missing or of the wrong type."""
    for key in REQUIRED:
        if data.get(key) is None:
            raise PetsegError(f"checkpoint {path} has no {key!r}: it is damaged or was not written by petseg-bench")
    for key, kind in FIELD_TYPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, kind):
            raise PetsegError(f"checkpoint {path}: {key!r} is a {type(value).__name__}, not a {kind.__name__}")
    options = (data.get("model_config") or {}).get("options")
    if options is not None and not isinstance(options, dict):
        raise PetsegError(f"checkpoint {path}: 'model_config.options' is a {type(options).__name__}, not a dict")
    for name, value in data["state_dict"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise PetsegError(f"checkpoint {path}: state_dict[{name!r}] is a {type(value).__name__}, not a tensor")



def model_config(data: dict[str, Any], spec, path: Path):
    """The checkpoint's :class:`ModelConfig`, validated by the model's spec; an older
    config is upgraded on the way: format 1 held the model settings as flat fields, format 2
    the former generic fields (base_channels, dropout) that are options now."""
    from ..specs import FORMER_FIELDS, GENERIC_FIELDS

    raw = dict(data.get("model_config") or {})
    options = dict(raw.pop("options", None) or {})
    generic = {k: raw.pop(k) for k in list(raw) if k in GENERIC_FIELDS}
    version = data.get("format_version", 1)
    if version < 3:
        options = {**{k: raw.pop(k) for k in FORMER_FIELDS if k in raw}, **options}
    if version < 2 or (version < 3 and not raw):
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
