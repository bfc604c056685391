"""The plugin layer: documented hook specs, registry selection, and one clear line per
broken plugin while the others keep working."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest

from petseg_bench import hookimpl, hookspecs
from petseg_bench.errors import PluginError
from petseg_bench.plugins import GROUP, KINDS, Registry, build_registry, make_manager
from petseg_bench.specs import MetricSpec, ModelSpec, PerturbationSpec


def ep(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=GROUP)


def real_eps() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=GROUP))


def build(*plugins) -> Registry:
    """A registry from in-memory plugin objects, (name, object) pairs."""
    pm, problems = make_manager(entry_points=[])
    for name, obj in plugins:
        pm.register(obj, name=name)
    return build_registry(pm, problems)


def dummy_build(config):  # never called here
    raise AssertionError


def identity(images, value, rngs):
    return [im.copy() for im in images]


def mean_fn(cm):
    return cm.sum((-2, -1))


class Plugin:
    """An in-memory plugin: ``Plugin(models=[...], perturbations=[...], metrics=[...])``."""

    def __init__(self, models=(), perturbations=(), metrics=()):
        self.m, self.p, self.x = models, perturbations, metrics

    @hookimpl
    def petseg_bench_models(self):
        return self.m() if callable(self.m) else list(self.m)

    @hookimpl
    def petseg_bench_perturbations(self):
        return list(self.p)

    @hookimpl
    def petseg_bench_metrics(self):
        return list(self.x)


def model(name, **kw):
    return ModelSpec(name=name, build=dummy_build, **kw)


def pert(name):
    return PerturbationSpec(name=name, param="x", levels=(0, 1), apply=identity)


def metric(name):
    return MetricSpec(name=name, fn=mean_fn, per_class=False)


# --- hook specifications --------------------------------------------------------------

def test_every_hookspec_is_documented_and_known():
    funcs = {n: f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("petseg_bench_")}
    assert set(funcs) == set(KINDS)
    pm, _ = make_manager(entry_points=[])
    hook_names = {n for n in dir(pm.hook) if n.startswith("petseg_bench_")}
    assert hook_names == set(funcs)
    for name, func in funcs.items():
        assert hasattr(func, "petseg_bench_spec"), f"{name} is not a hookspec"
        doc = inspect.getdoc(func)
        assert doc and len(doc) > 80, f"{name} has no real docstring"
        assert KINDS[name][1].__name__ in doc  # says which spec to return
    assert inspect.getdoc(hookspecs)


# --- selection ------------------------------------------------------------------------

@pytest.fixture
def reg() -> Registry:
    return build(("zoo", Plugin(models=[model("unet"), model("clip_only"), model("clip_unet")],
                                perturbations=[pert("gaussian_noise"), pert("gaussian_blur"), pert("occlusion")])))


def test_select_exact_wildcard_all_and_lists(reg):
    assert reg.select("model", "unet") == ["unet"]
    assert reg.select("model", "clip*") == ["clip_only", "clip_unet"]
    assert reg.select("model", "all") == ["clip_only", "clip_unet", "unet"]
    assert reg.select("model", "unet, clip_unet") == ["unet", "clip_unet"]
    assert reg.select("model", "unet,clip*,unet") == ["unet", "clip_only", "clip_unet"]  # no repeats
    assert reg.select("perturbation", "gaussian*") == ["gaussian_blur", "gaussian_noise"]
    assert reg.get("model", "unet").name == "unet"
    assert reg.origins[("model", "unet")] == "zoo"


def test_unknown_name_is_one_line_listing_names(reg):
    with pytest.raises(PluginError) as info:
        reg.select("model", "unet,resnet")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'resnet'" in msg and "clip_only, clip_unet, unet" in msg
    with pytest.raises(PluginError, match="available: gaussian_blur, gaussian_noise, occlusion"):
        reg.select("perturbation", "blur*")
    with pytest.raises(PluginError, match="no model selected"):
        reg.select("model", " , ")
    with pytest.raises(PluginError, match="none installed"):
        build().get("metric", "iou")


# --- broken plugins -------------------------------------------------------------------

def test_missing_module_costs_one_line(tmp_path):
    pm, problems = make_manager(entry_points=[ep("broken", "some_missing_module_xyz"), *real_eps()])
    assert len(problems) == 1
    assert "'broken'" in problems[0] and "some_missing_module_xyz" in problems[0] and "\n" not in problems[0]
    reg = build_registry(pm, problems)
    assert reg.problems == problems
    assert {"unet", "clip_unet"} <= set(reg.models)
    assert "gaussian_noise" in reg.perturbations and "iou" in reg.metrics


def test_plugin_raising_on_import_costs_one_line(tmp_path, monkeypatch):
    (tmp_path / "petseg_test_raises_xyz.py").write_text("raise RuntimeError('boom at import\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [ep("raiser", "petseg_test_raises_xyz"), ep("metrics", "petseg_bench.metrics")]
    pm, problems = make_manager(entry_points=eps)
    assert problems == ["plugin 'raiser' (petseg_test_raises_xyz) failed to load: RuntimeError: boom at import"]
    assert set(build_registry(pm, problems).metrics) == {"iou", "dice", "pixel_accuracy"}


def test_invalid_specs_are_skipped_one_line_each():
    bad = Plugin(models=[model("Bad Name"), pert("not_a_model"), model("point_only", inputs=("point",)),
                         model("good_model")],
                 metrics=[metric("fine_metric"), "just a string"])
    reg = build(("shaky", bad))
    assert set(reg.models) == {"good_model"} and set(reg.metrics) == {"fine_metric"}
    assert len(reg.problems) == 4
    for line in reg.problems:
        assert line.startswith("plugin 'shaky': invalid ") and "\n" not in line
    text = "\n".join(reg.problems)
    assert "'Bad Name'" in text and "lower-case" in text
    assert "expected ModelSpec, got PerturbationSpec" in text
    assert "'point_only'" in text and "'image'" in text
    assert "expected MetricSpec, got str" in text


def test_hook_raising_or_returning_a_non_list_is_reported():
    def boom():
        raise ValueError("cannot build list")

    reg = build(("raises", Plugin(models=boom, metrics=[metric("m1")])),
                ("single", Plugin(models=lambda: model("lonely"), perturbations=[pert("p1")])))
    assert set(reg.metrics) == {"m1"} and set(reg.perturbations) == {"p1"} and not reg.models
    assert len(reg.problems) == 2
    assert any("'raises'" in p and "ValueError: cannot build list" in p for p in reg.problems)
    assert any("'single'" in p and "returned ModelSpec" in p for p in reg.problems)


def test_duplicate_names_reported_first_kept(monkeypatch):
    reg = build(("alpha", Plugin(models=[model("net")], metrics=[metric("iou")])),
                ("beta", Plugin(models=[model("net"), model("other")])))
    assert reg.origins[("model", "net")] == "alpha" and "other" in reg.models
    assert reg.problems == ["plugin 'beta': model 'net' already provided by 'alpha'; ignored"]
    # against the real metrics plugin, loaded through its entry point
    pm, problems = make_manager(entry_points=[ep("metrics", "petseg_bench.metrics")])
    pm.register(Plugin(metrics=[metric("iou")]), name="zzz_third_party")
    reg = build_registry(pm, problems)
    assert reg.origins[("metric", "iou")] == "metrics"
    assert reg.problems == ["plugin 'zzz_third_party': metric 'iou' already provided by 'metrics'; ignored"]


def test_duplicate_entry_point_names():
    # the same distribution seen twice: silently one
    pm, problems = make_manager(entry_points=[ep("metrics", "petseg_bench.metrics")] * 2)
    assert problems == [] and pm.get_plugin("metrics") is not None
    # two different plugins under one name: the second is reported, not silently dropped
    pm, problems = make_manager(entry_points=[ep("metrics", "petseg_bench.metrics"),
                                              ep("metrics", "some_other_plugin_xyz")])
    assert len(problems) == 1 and "'metrics'" in problems[0] and "some_other_plugin_xyz" in problems[0]


def test_real_registry_is_clean():
    pm, problems = make_manager()
    reg = build_registry(pm, problems)
    builtin = {e.name for e in real_eps() if e.value.startswith("petseg_bench")}
    assert not [p for p in reg.problems if any(p.startswith(f"plugin {n!r}") for n in builtin)], reg.problems
    assert {"unet", "autoencoder", "clip_only", "clip_unet", "point_clip_unet"} <= set(reg.models)
    assert len(reg.perturbations) >= 8 and {"iou", "dice", "pixel_accuracy"} <= set(reg.metrics)


def test_no_generic_top_level_names_installed():
    """plugins/ and perturbations/ install under distinct names, never as `plugins`."""
    import importlib.util

    import petseg_bench_models
    import petseg_bench_perturbations

    assert importlib.util.find_spec("petseg_bench_models") is not None
    assert importlib.util.find_spec("petseg_bench_perturbations") is not None
    for generic in ("plugins", "perturbations"):
        spec = importlib.util.find_spec(generic)
        # Running pytest from the repo root may put the source folder itself on sys.path;
        # what must not exist is an installed package of that name in site-packages.
        assert spec is None or "site-packages" not in str(spec.origin or spec.submodule_search_locations)
    assert petseg_bench_models.__name__ == "petseg_bench_models"
    assert petseg_bench_perturbations.__name__ == "petseg_bench_perturbations"
