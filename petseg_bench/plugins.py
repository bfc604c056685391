"""The plugin manager and the registry of models, perturbations and metrics.

Built-in plugins are found exactly like third-party ones: through the ``petseg_bench``
entry-point group of the installed distributions. The core never imports a model by
name.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PLUGIN_FAILURES, PetsegError, PluginError, call_plugin, one_line
from .families import ModelFamilySpec, model_dirname, split_model_key
from .specs import BackboneSpec, MetricSpec, ModelSpec, PerturbationSpec

GROUP = "petseg_bench"
#: The distribution whose entry points are the built-in plugins: loaded first, so a
#: third-party spec of the same name is the one reported and ignored.
BUILTIN_DIST = "petseg-bench"

#: hook name -> (kind shown to users, spec class)
KINDS: dict[str, tuple[str, type]] = {
    "petseg_bench_models": ("model", ModelSpec),
    "petseg_bench_backbones": ("backbone", BackboneSpec),
    "petseg_bench_perturbations": ("perturbation", PerturbationSpec),
    "petseg_bench_metrics": ("metric", MetricSpec),
    "petseg_bench_model_families": ("model family", ModelFamilySpec),
}


@dataclass
class Registry:
    """Every valid spec by kind and name, plus one line per plugin problem."""

    models: dict[str, ModelSpec] = field(default_factory=dict)
    backbones: dict[str, BackboneSpec] = field(default_factory=dict)
    perturbations: dict[str, PerturbationSpec] = field(default_factory=dict)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    families: dict[str, ModelFamilySpec] = field(default_factory=dict)
    family_models: dict[str, ModelSpec] = field(default_factory=dict)  # key -> spec, built on first use
    origins: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin
    problems: list[str] = field(default_factory=list)

    def table(self, kind: str) -> dict[str, Any]:
        return {"model": self.models, "backbone": self.backbones, "perturbation": self.perturbations,
                "metric": self.metrics, "model family": self.families}[kind]

    def select(self, kind: str, pattern: str) -> list[str]:
        """Names of ``kind`` matching ``pattern``: exact names, ``fnmatch`` wildcards
        (``*net``) or ``all``, comma-separated. Unknown names raise one clear line; specs
        marked unavailable are left out of ``all`` and wildcards, and named alone say why.
        Attacks (perturbations with ``target="model"``) are left out of ``all`` and ``*``:
        name them or match them with another wildcard (``adv_*``)."""
        table = self.table(kind)
        chosen: list[str] = []
        for part in [p.strip() for p in pattern.split(",") if p.strip()]:
            if kind == "model" and part not in table and split_model_key(part) is not None:
                self.get(kind, part)  # a family key (onnx:model.onnx): resolved, or one line why not
                chosen += [part] if part not in chosen else []
                continue
            if part in ("all", "*"):  # every spec but the attacks, which cost many passes per image and model
                hits = sorted(n for n in table if getattr(table[n], "target", None) != "model")
            else:
                hits = sorted(n for n in table if fnmatch.fnmatchcase(n, part))
            if not hits:
                self.get(kind, part)  # raises the one-line "unknown ..." error
            usable = [h for h in hits if not getattr(table[h], "unavailable", None)]
            if not usable and part not in ("all", "*"):
                raise PluginError(f"{kind} {hits[0]!r} is not available: {table[hits[0]].unavailable}")
            chosen += [h for h in usable if h not in chosen]
        if not chosen:
            raise PluginError(f"no {kind} selected by {pattern!r}")
        return chosen

    def get(self, kind: str, name: str) -> Any:
        """The spec of ``kind`` called exactly ``name``."""
        table = self.table(kind)
        if kind == "model" and name not in table and split_model_key(name) is not None:
            return self.family_model(name)
        if name not in table:
            known = ", ".join(sorted(table)) or "none installed"
            raise PluginError(f"unknown {kind} {name!r}; available: {known}")
        return table[name]

    def reference_model(self) -> str | None:
        """The model corruption errors (CE, mCE) are normalised by unless a report names
        another: the installed one whose spec declares ``reference`` (the first by name)."""
        return next((n for n in sorted(self.models) if self.models[n].reference), None)


    def family_model(self, key: str) -> ModelSpec:
        """The spec of model ``family:argument``, built by its family on first use
        (see :mod:`petseg_bench.families`); one line when the family is unknown,
        unavailable or refuses the argument."""
        if key in self.family_models:
            return self.family_models[key]
        family, arg = split_model_key(key)
        fam = self.families.get(family)
        if fam is None:
            known = ", ".join(sorted(self.families)) or "none installed"
            raise PluginError(f"unknown model {key!r}: no model family {family!r} (families: {known})")
        if fam.unavailable:
            raise PluginError(f"model family {family!r} is not available: {fam.unavailable}")
        spec = call_plugin(f"model {key!r} could not be made", fam.build, arg)
        if not isinstance(spec, ModelSpec):
            raise PluginError(f"model family {family!r} returned {type(spec).__name__}, not a ModelSpec")
        import dataclasses

        try:  # its own name is free; everything else is checked as for any model
            dataclasses.replace(spec, name=family.replace("-", "_")).validate()
        except ValueError as exc:
            raise PluginError(f"model family {family!r} made an invalid spec for {key!r}: {one_line(exc)}") from None
        spec = dataclasses.replace(spec, name=key, label=spec.label or key)
        self.family_models[key] = spec
        return spec


def make_manager(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> tuple[pluggy.PluginManager, list[str]]:
    """A plugin manager with every loadable ``petseg_bench`` entry point registered.

    pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails to
    import; here each entry point is loaded on its own so that one broken plugin costs
    one message and nothing else.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    problems: list[str] = []
    eps = importlib.metadata.entry_points(group=GROUP) if entry_points is None else entry_points
    seen: dict[str, str] = {}
    for ep in sorted(eps, key=load_order):
        if ep.name in seen:
            if seen[ep.name] != ep.value:  # two different plugins under one name: say so
                problems.append(f"plugin {ep.name!r} ({ep.value}) not loaded: the name is already "
                                f"taken by {seen[ep.name]}")
            continue  # else the same distribution visible twice on sys.path
        seen[ep.name] = ep.value
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except BaseException as exc:  # noqa: BLE001 - any failure of a plugin (even sys.exit) is reported, not raised
            if isinstance(exc, KeyboardInterrupt):
                raise
            problems.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {one_line(exc, default='(no message)')}")
            continue
        try:  # a hook implementation whose name matches no hook (a typo) is an error, not ignored
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=ep.name)
            problems.append(f"plugin {ep.name!r} ({ep.value}) not loaded: {one_line(exc)}")
    return pm, problems


def load_order(ep: importlib.metadata.EntryPoint) -> tuple[int, str]:
    """Built-in plugins first, then third-party ones, each by entry-point name."""
    dist = getattr(ep, "dist", None)
    name = (dist.metadata["Name"] or "") if dist is not None else ""
    builtin = re.sub(r"[-_.]+", "-", name).lower() == BUILTIN_DIST
    return (0 if builtin else 1, ep.name)


def build_registry(pm: pluggy.PluginManager, problems: list[str] | None = None) -> Registry:
    reg = Registry(problems=list(problems or []))
    for hook_name, (kind, spec_cls) in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            try:
                specs = impl.function()
            except PLUGIN_FAILURES as exc:  # sys.exit in a hook too: one problem line, not the end of the command
                reg.problems.append(f"plugin {plugin!r}: {hook_name}() raised {type(exc).__name__}: {one_line(exc, default='(no message)')}")
                continue
            if specs is None:
                specs = []
            if not isinstance(specs, (list, tuple)):
                reg.problems.append(f"plugin {plugin!r}: {hook_name}() returned {type(specs).__name__}, "
                                    f"expected a list of {spec_cls.__name__}")
                continue
            for spec in specs:
                label = getattr(spec, "name", repr(spec))
                try:
                    if not isinstance(spec, spec_cls):
                        raise ValueError(f"expected {spec_cls.__name__}, got {type(spec).__name__}")
                    spec.validate()
                except Exception as exc:  # noqa: BLE001
                    reg.problems.append(f"plugin {plugin!r}: invalid {kind} spec {label!r}: {one_line(exc, default='(no message)')}")
                    continue
                table = reg.table(kind)
                if spec.name in table:
                    first = reg.origins[(kind, spec.name)]
                    reg.problems.append(f"plugin {plugin!r}: {kind} {spec.name!r} already provided by {first!r}; ignored")
                    continue
                table[spec.name] = spec
                reg.origins[(kind, spec.name)] = plugin
    return reg


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry of installed plugins (loaded once)."""
    pm, problems = make_manager()
    return build_registry(pm, problems)


# --------------------------------------------------------------------------- model keys


def family_of(model: str) -> ModelFamilySpec | None:
    """The :class:`~petseg_bench.families.ModelFamilySpec` of a key, or None for a plain model name."""
    parts = split_model_key(model)
    return None if parts is None else get_registry().families.get(parts[0])


def is_model_file(model: str) -> bool:
    fam = family_of(model)
    return bool(fam is not None and fam.model_file)


def checkpoint_path(model: str, checkpoints_dir: Path) -> Path:
    """Where ``run`` finds the model: ``DIR/<folder>/best.pt``, or the file of a model-file key."""
    if is_model_file(model):
        return Path(split_model_key(model)[1])
    return Path(checkpoints_dir) / model_dirname(model) / "best.pt"


def refuse_training(model: str) -> None:
    """One line when ``model`` is a model file: those are evaluation-only."""
    if is_model_file(model):
        raise PetsegError(f"{model} is a model file and evaluation-only: it cannot be trained "
                          f"(run, evaluate and check take it as it is)")
