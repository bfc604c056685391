"""The run record (``run.json``) as typed objects: :class:`RunRecord` and its parts.

:meth:`RunRecord.from_json` checks a record against the schema
(:mod:`petseg_bench.record_schema`) and :meth:`RunRecord.to_json` gives it back: the same
keys in the same order with the same values, keys this version does not know (a plan's
extras, a plugin's, a newer version's) kept in ``extra`` at their place. So a record read
and written again is the same file, byte for byte. A key is in the record once it was
read or assigned (``record.finished = ...`` appends it where it is new, as a dict
would); a field never set reads as its default and is not written.

The resume rule lives here too: :meth:`RunRecord.resume_conflict` names the keys whose
values a resumed run (or another shard of it) must share with the saved record.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .record_schema import check_record

#: run.json keys that must match for --resume to reuse finished cells. The runtime is among
#: them: bf16 and fp32 (or another GPU model, or compiled kernels) give other logits, and
#: near ties flip pixels, so cells computed under two runtimes would mix two results.
RESUME_KEYS = ("models", "perturbations", "levels", "seed", "limit", "void", "image_ids", "data_fingerprint",
               "checkpoints", "perturbation_params", "precision", "device", "batch_size", "compile")


class _Keyed:
    """A JSON object as a dataclass that remembers its keys' order and keeps unknown keys.

    ``_keys`` lists the keys present, in order; assigning a field adds its key (at the
    end) when it is new. ``extra`` holds the keys that are no field, by name."""

    _NESTED: ClassVar[dict[str, type]] = {}  # field -> type of its mapping's values

    def __post_init__(self) -> None:
        # Built in code, not read: the fields that differ from their defaults are its keys.
        if not self._keys:
            defaults = {f.name: f.default_factory() if callable(f.default_factory) else f.default for f in fields(self)}
            keys = [k for k, v in self._values().items() if v != defaults[k]]
            object.__setattr__(self, "_keys", keys + [k for k in self.extra if k not in keys])

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        keys = self.__dict__.get("_keys")
        if keys is not None and name in self._field_names() and name not in keys:
            keys.append(name)

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("extra", "_keys"))

    def _values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._field_names()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The object of the JSON object ``data`` (unchecked; see :meth:`RunRecord.from_json`)."""
        names = set(cls._field_names())
        known = {k: cls._load(k, v) for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names}, _keys=list(data))

    @classmethod
    def _load(cls, key: str, value: Any) -> Any:
        part = cls._NESTED.get(key)
        if part is None or not isinstance(value, dict):
            return value
        return {k: part.from_dict(v) if isinstance(v, dict) else v for k, v in value.items()}

    def to_json(self) -> dict[str, Any]:
        """The JSON object: every key present, in order (unknown ones from ``extra``)."""
        names = set(self._field_names())
        out = {}
        for k in [*self._keys, *(k for k in self.extra if k not in self._keys)]:
            if k in names:
                v = getattr(self, k)
                out[k] = {m: p.to_json() if isinstance(p, _Keyed) else p for m, p in v.items()} \
                    if k in self._NESTED and isinstance(v, dict) else v
            elif k in self.extra:
                out[k] = self.extra[k]
        return out

    # No JSON view (record["key"]): readers use the attributes, and to_json() where they
    # want the JSON object (tests/test_run_record.py scans the package for string keys).
    def has(self, key: str) -> bool:
        """Whether the record holds ``key`` (a field's default is not held)."""
        return key in self._keys or key in self.extra

    def set(self, key: str, value: Any) -> None:
        """Set ``key``: a field's attribute, else an extra key (added at the end when new)."""
        if key in self._field_names():
            setattr(self, key, value)
            return
        self.extra[key] = value
        if key not in self._keys:
            self._keys.append(key)

    def drop(self, *keys: str) -> None:
        """Remove ``keys`` (a field reads its default again)."""
        defaults = {f.name: f for f in fields(self)}
        for k in keys:
            if k in self._keys:
                self._keys.remove(k)
            self.extra.pop(k, None)
            f = defaults.get(k)
            if f is not None and k in self._field_names():
                object.__setattr__(self, k, f.default_factory() if callable(f.default_factory) else f.default)


@dataclass(eq=False)
class ModelInfo(_Keyed):
    """``model_info[model]``: the checkpoint a sweep loaded for a model, and what it says."""

    checkpoint: str | None = None
    sha256: str | None = None
    backbone: str | dict | None = None  # a backbone record (label, random_init...), or an older name
    encoder: str | None = None  # the pretrained encoder it fine-tuned
    eval_click_rule: str | None = None  # set: the model takes an evaluation click
    in_size: int | None = None
    base_channels: int | None = None
    train_config: dict | None = None
    train_data_fingerprint: str | None = None
    val: dict | None = None
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _keys: list[str] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class RuntimeFacts:
    """What the record says about the machine that computes the cells (picklable: a Ray
    worker reports its own)."""

    precision: str
    device: str  # the device kind, e.g. "cpu (CPU, 2 threads, AVX2)"
    runtime: str  # the line the report prints, e.g. "cpu (...), fp32"
    hardware: str | None = None
    hardware_info: dict | None = None


@dataclass(eq=False)
class RunRecord(_Keyed):
    """A sweep's run record (``run.json``); see the module docstring. Field order is the
    schema's; the order of a record's keys is its own (``_keys``)."""

    _NESTED: ClassVar[dict[str, type]] = {"model_info": ModelInfo}

    models: list[str] = field(default_factory=list)
    perturbations: list[str] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    seed: int = 0
    limit: int | None = None
    void: str | None = None
    image_ids: list[str] = field(default_factory=list)
    data_fingerprint: str | None = None
    checkpoints: dict[str, str | None] = field(default_factory=dict)  # model -> sha256 of its checkpoint
    perturbation_params: dict[str, dict] = field(default_factory=dict)  # name -> {"param", "values"}
    precision: str | None = None
    device: str | None = None
    batch_size: int | None = None
    compile: bool | None = None
    code_version: str | None = None
    packages: dict | None = None
    hardware: str | None = None
    hardware_info: dict | None = None
    runtime: str | None = None
    started: str | None = None
    data_root: str | None = None
    breed_groups: dict | None = None  # the training split's breed counts (the report's breed section)
    shard: dict | None = None  # {"index", "count"}: a shard's record
    model_info: dict[str, ModelInfo | None] = field(default_factory=dict)
    click_perturbations: list[str] = field(default_factory=list)
    perturbation_families: dict[str, dict] = field(default_factory=dict)  # name -> {"family", "label"}
    click_off_foreground: dict[str, dict[str, float | None]] = field(default_factory=dict)  # pert -> level -> share
    cells_computed: int | None = None
    image_levels_per_s: float | None = None
    wall_seconds: float | None = None
    wall_seconds_before: float | None = None
    finished: str | None = None
    merged_from: list[dict] = field(default_factory=list)
    missing_shards: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    _keys: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_json(cls, data: Any, path: Path | str = "run.json") -> "RunRecord":
        """The record of the JSON value ``data`` read from ``path``; one line naming the
        file and the first problem when it is not a valid run record."""
        check_record(data, path)
        return cls.from_dict(data)

    @classmethod
    def of(cls, run: "RunRecord | dict") -> "RunRecord":
        """``run`` as a record: a plain dict (a caller's, a test's part of a record) is
        taken as it is, unchecked; what is read from disk is checked (:meth:`from_json`)."""
        return run if isinstance(run, RunRecord) else cls.from_dict(dict(run))

    @classmethod
    def new(cls, **values: Any) -> "RunRecord":
        """A record of exactly these keys, in this order (None values included)."""
        return cls.from_dict(values)

    def check(self, path: Path | str) -> None:
        """One line naming ``path`` when this record is not valid (see :meth:`from_json`)."""
        check_record(self.to_json(), path)

    def copy(self) -> "RunRecord":
        import copy

        return copy.deepcopy(self)

    # --- what a model takes -------------------------------------------------------

    def info(self, model: str) -> ModelInfo | None:
        """The model's ``model_info`` entry (None where the record has none)."""
        return self.model_info.get(model)

    def takes_click(self, model: str) -> bool | None:
        """Whether ``model`` takes an evaluation click, as recorded (None: not recorded)."""
        info = self.info(model)
        return None if info is None else info.eval_click_rule is not None

    def level_values(self, perturbation: str) -> list | None:
        """The recorded level values of ``perturbation`` (None when not recorded)."""
        params = self.perturbation_params.get(perturbation)
        return params.get("values") if isinstance(params, dict) else None

    # --- what the sweep adds ------------------------------------------------------

    def set_runtime(self, facts: RuntimeFacts, code_version: str, packages: dict, started: str) -> None:
        """The provenance a sweep session records (``started`` only where the record has none)."""
        self.code_version, self.packages = code_version, packages
        self.hardware, self.hardware_info, self.runtime = facts.hardware, facts.hardware_info, facts.runtime
        self.started = self.started or started

    def set_extras(self, values: dict[str, Any]) -> None:
        """A plan's extra keys (e.g. ``allowed_overlap``), in their order."""
        for k, v in values.items():
            self.set(k, v)

    def open_click_shares(self) -> None:
        """Hold ``click_off_foreground`` (empty until a click perturbation's group finishes)."""
        self.click_off_foreground = self.click_off_foreground

    def add_click_share(self, perturbation: str, level: int, share: float | None) -> None:
        """The share of images whose moved click is off the pet, for a click perturbation's level."""
        self.open_click_shares()
        self.click_off_foreground.setdefault(perturbation, {})[str(level)] = share

    def finish(self, cells: int, n_images: int, compute_s: float, session_s: float, finished: str) -> None:
        """A finished session: cells computed, their speed, the wall time over every session."""
        self.cells_computed = cells
        self.image_levels_per_s = round(cells * n_images / compute_s, 2) if cells else None
        self.wall_seconds = round(session_s + (self.wall_seconds_before or 0.0), 1)
        self.wall_seconds_before = self.wall_seconds
        self.finished = finished

    def updated_by(self, new: "RunRecord") -> "RunRecord":
        """This (saved) record with every key of ``new`` set as ``new`` has it: a resumed
        run keeps what only the saved record says (its start, its earlier wall time)."""
        out = self.copy()
        for k, v in new.to_json().items():
            out.set(k, RunRecord._load(k, v))
        return out

    # --- the resume rule ----------------------------------------------------------

    def resume_conflict(self, new: "RunRecord") -> str | None:
        """How this (saved) record differs from ``new`` in the keys a resume must match,
        up to three, each named with its old and new value; None when it does not."""
        old = {**self._runtime_of_old_record(new), **self.to_json()}
        now = new.to_json()
        diff = [k for k in RESUME_KEYS if _canonical(k, old.get(k)) != _canonical(k, now.get(k))]
        return "; ".join(_describe_diff(k, old.get(k), now.get(k)) for k in diff[:3]) or None

    def _runtime_of_old_record(self, new: "RunRecord") -> dict:
        """Precision and device of a run.json written before they were resume keys, read from
        its ``runtime`` line ("cpu (CPU, 2 threads, AVX2), fp32"): that line names the device
        type only, so only the type is compared."""
        text, now = self.runtime, new.device
        if not isinstance(text, str) or ", " not in text or not isinstance(now, str) or self.has("device"):
            return {}
        device = now if text.split(" ", 1)[0] == now.split(" ", 1)[0] else text.split(" ", 1)[0]
        return {"precision": text.rsplit(", ", 1)[1], "device": device}


def _canonical(key: str, value):
    """Order does not matter for the model and perturbation lists."""
    return sorted(value) if key in ("models", "perturbations") and value is not None else value


def _describe_diff(key: str, old, new) -> str:
    if key in ("image_ids",):
        return f"image_ids: the test images differ ({len(old or [])} before, {len(new or [])} now)"
    if key == "checkpoints":
        changed = sorted(m for m in set(old or {}) | set(new or {}) if (old or {}).get(m) != (new or {}).get(m))
        return f"checkpoints: changed for {', '.join(changed)}"
    return f"{key}: {old!r} -> {new!r}"
