"""The schema of a run record (``run.json``): what every reader may rely on.

:func:`check_record` refuses, in one line naming the file and the first problem, a record
whose keys have the wrong types, lack a required key, or hold a number that is not
finite (``NaN``, ``Infinity``: JSON readers accept them, no figure may be one). Required
are the keys that say which cells the run has (models, perturbations, levels, image ids,
seed); the others are checked where present, so records of older versions still load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from .errors import PetsegError

#: Keys every run record has: together they say which cells the run holds.
REQUIRED = ("models", "perturbations", "levels", "seed", "image_ids")

Check = Callable[[Any], str | None]  # None: fine; else what the value is not


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) else "is not a string"


def _opt(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def _int(minimum: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not _is_int(v):
            return "is not a whole number"
        return None if minimum is None or v >= minimum else f"is below {minimum}"
    return check


def _number(v: Any) -> str | None:
    return None if _is_number(v) else "is not a number"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "is not true or false"


def _names(unique: bool = True, empty: bool = True) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"is not a list of names (it is {type(v).__name__})"
        bad = [x for x in v if not isinstance(x, str) or not x]
        if bad:
            return f"holds {bad[0]!r}, not a name"
        if unique and len(set(v)) != len(v):
            return f"lists {next(x for x in v if v.count(x) > 1)!r} twice"
        return None if empty or v else "is empty"
    return check


def _levels(v: Any) -> str | None:
    if not isinstance(v, list):
        return f"is not a list of levels (it is {type(v).__name__})"
    bad = [x for x in v if not _is_int(x) or x < 1]
    if bad:
        return f"holds {bad[0]!r}, not a perturbed level (a whole number >= 1)"
    return f"lists level {next(x for x in v if v.count(x) > 1)} twice" if len(set(v)) != len(v) else None


def _mapping(value_check: Check, what: str = "object") -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"is not an {what} (it is {type(v).__name__})"
        for k, x in v.items():
            problem = value_check(x)
            if problem:
                return f"[{k!r}] {problem}"
        return None
    return check


def _fields(**checks: Check) -> Check:
    """An object whose named keys, where present, pass their checks."""
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"is not an object (it is {type(v).__name__})"
        for k, c in checks.items():
            if k in v:
                problem = c(v[k])
                if problem:
                    return f"[{k!r}] {problem}"
        return None
    return check


def _params(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"is not {{\"param\": name, \"values\": [numbers]}} (it is {type(v).__name__})"
    if not isinstance(v.get("values"), list) or not all(_is_number(x) for x in v["values"]):
        return "has no \"values\" list of numbers"
    return None if v.get("param") is None or isinstance(v.get("param"), str) else "[\"param\"] is not a string"


def _object(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"is not an object (it is {type(v).__name__})"


_MODEL_INFO = _fields(checkpoint=_opt(_str), sha256=_opt(_str), eval_click_rule=_opt(_str), in_size=_opt(_int(1)),
                      base_channels=_opt(_int(1)), epoch=_opt(_int(0)), val=_opt(_object),
                      train_config=_opt(_object), backbone=lambda v: None if v is None or isinstance(v, (str, dict))
                      else "is not a name or an object", encoder=_opt(_str))
_SHARD = _fields(index=_int(0), count=_int(1))

#: Key -> its check. Keys not named here are free (a plan's extras, future keys).
SCHEMA: dict[str, Check] = {
    "models": _names(empty=False),
    "perturbations": _names(),
    "levels": _levels,
    "seed": _int(),
    "limit": _opt(_int(1)),
    "void": _str,
    "image_ids": _names(empty=False),
    "data_fingerprint": _opt(_str),
    "checkpoints": _mapping(_opt(_str)),
    "perturbation_params": _mapping(_params),
    "precision": _opt(_str), "device": _opt(_str), "runtime": _opt(_str), "hardware": _opt(_str),
    "code_version": _opt(_str), "started": _opt(_str), "data_root": _opt(_str),
    "batch_size": _opt(_int(1)),
    "compile": _opt(_bool),
    "packages": _opt(_object), "hardware_info": _opt(_object),
    "model_info": _mapping(_opt(_MODEL_INFO)),
    "click_perturbations": _names(),
    "perturbation_families": _mapping(_fields(family=_opt(_str), label=_opt(_str))),
    "click_off_foreground": _mapping(_mapping(_opt(_number))),
    "cells_computed": _opt(_int(0)),
    "image_levels_per_s": _opt(_number), "wall_seconds": _opt(_number), "wall_seconds_before": _opt(_number),
    "shard": _opt(_SHARD),
    "merged_from": lambda v: None if isinstance(v, list) and all(isinstance(x, dict) for x in v)
    else "is not a list of objects",
    "finished": _opt(_str),
    "missing_shards": _names(),
    "breed_groups": _opt(_fields(min_count=_int(0), train_counts=_mapping(_int(0)))),
}


def non_finite(value: Any, where: str = "") -> str | None:
    """Where in ``value`` (a JSON document) a number is NaN or infinite; None if nowhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        got = non_finite(v, f"{where}[{k!r}]" if where else repr(k))
        if got:
            return got
    return None


def record_problem(record: Any) -> str | None:
    """The first way ``record`` is not a run record, in words; None when it is one."""
    if not isinstance(record, dict):
        return f"is not a run record (a JSON object); it holds {type(record).__name__}"
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return f"lacks the key {missing[0]!r}"
    for key, check in SCHEMA.items():
        if key in record:
            problem = check(record[key])
            if problem:
                return f"{key!r} {problem}"
    where = non_finite(record)
    if where:
        return f"{where} is not a finite number (NaN or infinity)"
    unknown = sorted(set(record.get("click_perturbations") or []) - set(record["perturbations"]))
    if unknown:
        return f"'click_perturbations' names {unknown[0]!r}, which is not among its perturbations"
    return None


def check_record(record: Any, path: Path | str) -> None:
    """Raise one line naming ``path`` and the first problem of ``record``."""
    problem = record_problem(record)
    if problem:
        raise PetsegError(f"{path} {problem}: not a valid run record (rerun the sweep, or restore the file)")
