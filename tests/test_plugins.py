"""The plugin layer: documented hook specs, registry selection, and one clear line per
broken plugin while the others keep working."""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import textwrap
from types import SimpleNamespace

import pytest

from petseg_bench import hookimpl, hookspecs, plugins
from petseg_bench.errors import PluginError
from petseg_bench.plugins import BUILTIN_DIST, GROUP, KINDS, Registry, build_registry, make_manager
from petseg_bench.specs import BackboneSpec, MetricSpec, ModelSpec, PerturbationSpec


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
    """An in-memory plugin: ``Plugin(models=[...], backbones=[...], perturbations=[...], metrics=[...])``."""

    def __init__(self, models=(), perturbations=(), metrics=(), backbones=()):
        self.m, self.p, self.x, self.b = models, perturbations, metrics, backbones

    @hookimpl
    def petseg_bench_models(self):
        return self.m() if callable(self.m) else list(self.m)

    @hookimpl
    def petseg_bench_backbones(self):
        return list(self.b)

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


def backbone(name):
    return BackboneSpec(name=name, build=dummy_build, example=f"{name}:x")


@pytest.fixture
def plugin_module(tmp_path, monkeypatch, request):
    """Factory: ``plugin_module(name, source)`` writes an importable module (a plugin as an
    outside author would write it) and forgets it again after the test."""

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        request.addfinalizer(lambda: sys.modules.pop(name, None))
        return name

    return write


# --- hook specifications --------------------------------------------------------------

def hookspec_functions() -> dict:
    """Every hook specification in hookspecs, found by pluggy's marker (not by name)."""
    return {n: f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "petseg_bench_spec")}


def test_every_hookspec_is_documented_and_known():
    funcs = hookspec_functions()
    assert {"petseg_bench_models", "petseg_bench_backbones", "petseg_bench_perturbations",
            "petseg_bench_metrics"} <= set(funcs)
    # a hook missing from KINDS would never reach the registry; a KINDS entry without a hook is dead
    assert set(funcs) == set(KINDS), f"hooks not in plugins.KINDS: {sorted(set(funcs) - set(KINDS))}; " \
                                     f"KINDS without a hook: {sorted(set(KINDS) - set(funcs))}"
    # every function named like a hook is marked as one (a forgotten @hookspec)
    named = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("petseg_bench_")}
    assert named == set(funcs)
    pm, _ = make_manager(entry_points=[])
    hook_names = {n for n in dir(pm.hook) if n.startswith("petseg_bench_")}
    assert hook_names == set(funcs)
    assert inspect.getdoc(hookspecs)


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hook_has_a_docstring_and_a_kind(name):
    func = hookspec_functions()[name]
    doc = inspect.getdoc(func)
    assert doc and len(doc) > 80, f"{name} has no real docstring"
    assert name in KINDS, f"{name} is not in petseg_bench.plugins.KINDS"
    kind, spec_cls = KINDS[name]
    assert spec_cls.__name__ in doc, f"{name}'s docstring does not say it returns {spec_cls.__name__}"
    assert isinstance(Registry().table(kind), dict)  # the registry keeps a table of that kind
    assert inspect.getdoc(spec_cls), f"{spec_cls.__name__} has no docstring"


def test_list_shows_every_kind():
    """``petseg-bench list`` shows a section per hook kind (a new hook must appear there too)."""
    from click.testing import CliRunner

    from petseg_bench.cli import main

    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    for kind, _ in KINDS.values():
        assert f"{'model families' if kind == 'model family' else kind + 's'}:" in result.output, kind
    assert "e.g. clip:ViT-B-32:openai" in result.output
    only = CliRunner().invoke(main, ["list", "clip"])
    assert only.exit_code == 0, only.output
    assert "backbones:" in only.output and "models:" not in only.output
    assert "clip_backbone" in only.output  # the plugin that provides it


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


def test_backbones_are_a_kind_of_their_own():
    reg = build(("zoo", Plugin(models=[model("clip_unet")], backbones=[backbone("clip"), backbone("pool"),
                                                                       backbone("clip2")])))
    assert reg.table("backbone") is reg.backbones
    assert reg.select("backbone", "clip") == ["clip"]
    assert reg.select("backbone", "clip*") == ["clip", "clip2"]
    assert reg.select("backbone", "all") == ["clip", "clip2", "pool"]
    assert reg.select("model", "clip*") == ["clip_unet"]  # kinds do not mix
    assert reg.origins[("backbone", "pool")] == "zoo"
    with pytest.raises(PluginError, match="unknown backbone 'resnet'; available: clip, clip2, pool"):
        reg.select("backbone", "resnet")
    with pytest.raises(PluginError, match="unknown model 'pool'"):
        reg.get("model", "pool")


def test_real_backbones_selected_and_listed_by_kind():
    pm, problems = make_manager()
    reg = build_registry(pm, problems)
    assert reg.select("backbone", "clip") == ["clip"]
    assert {"clip", "efficientnet"} <= set(reg.select("backbone", "all"))
    assert reg.origins[("backbone", "clip")] == "clip_backbone"
    assert reg.origins[("backbone", "efficientnet")] == "efficientnet"
    assert not set(reg.backbones) & set(reg.models)  # a family is not a model
    for spec in reg.backbones.values():
        assert isinstance(spec, BackboneSpec) and spec.description and spec.example.startswith(f"{spec.name}:")


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


def test_misspelled_hook_costs_one_line(plugin_module):
    """A hook implementation whose name matches no hook (petseg_bench_model) is reported,
    not silently ignored, and the other plugins still load."""
    name = plugin_module("petseg_test_typo_xyz", """
        from petseg_bench import hookimpl
        from petseg_bench.specs import ModelSpec

        @hookimpl
        def petseg_bench_model():
            return [ModelSpec(name="never_seen", build=print)]
    """)
    pm, problems = make_manager(entry_points=[ep("typo", name), ep("metrics", "petseg_bench.metrics")])
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith(f"plugin 'typo' ({name}) not loaded: ") and "\n" not in line
    assert "petseg_bench_model" in line
    assert pm.get_plugin("typo") is None and pm.get_plugin("metrics") is not None
    reg = build_registry(pm, problems)
    assert set(reg.metrics) == {"iou", "dice", "pixel_accuracy"} and "never_seen" not in reg.models
    assert reg.problems == problems


def test_misspelled_hook_beside_the_real_plugins(plugin_module):
    name = plugin_module("petseg_test_typo2_xyz", """
        from petseg_bench import hookimpl

        @hookimpl
        def petseg_bench_backbone():
            return []
    """)
    pm, problems = make_manager(entry_points=[*real_eps(), ep("zz_typo", name)])
    assert len(problems) == 1 and problems[0].startswith("plugin 'zz_typo'"), problems
    reg = build_registry(pm, problems)
    assert {"unet", "clip_unet"} <= set(reg.models) and "clip" in reg.backbones


@pytest.mark.parametrize("code, shown", [("sys.exit(3)", "SystemExit: 3"), ("sys.exit()", "SystemExit: (no message)"),
                                         ("raise SystemExit('bye')", "SystemExit: bye")])
def test_plugin_exiting_at_import_is_contained(plugin_module, code, shown):
    name = plugin_module("petseg_test_exit_xyz", f"""
        import sys
        {code}
    """)
    pm, problems = make_manager(entry_points=[ep("quitter", name), ep("metrics", "petseg_bench.metrics")])
    assert problems == [f"plugin 'quitter' ({name}) failed to load: {shown}"]
    reg = build_registry(pm, problems)
    assert set(reg.metrics) == {"iou", "dice", "pixel_accuracy"}
    assert reg.problems == problems


def test_keyboard_interrupt_in_a_plugin_is_not_swallowed(plugin_module):
    name = plugin_module("petseg_test_interrupt_xyz", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        make_manager(entry_points=[ep("ctrl_c", name)])


def test_third_party_cannot_replace_a_builtin(plugin_module):
    """A third party offering a model called ``unet`` is reported and ignored, even when its
    entry point's name sorts before the built-in's: built-ins load first."""
    name = plugin_module("petseg_test_clash_xyz", """
        from petseg_bench import hookimpl
        from petseg_bench.specs import ModelSpec

        def build(config):
            raise AssertionError("the impostor must never be built")

        @hookimpl
        def petseg_bench_models():
            return [ModelSpec(name="unet", build=build, description="an impostor"),
                    ModelSpec(name="clash_net", build=build, description="a fine new model")]
    """)
    third = ep("aaa_clash", name)  # no distribution: a third party
    eps = [third, *real_eps()]
    assert sorted(e.name for e in eps)[0] == "aaa_clash"  # by name alone it would load first
    assert all(getattr(e.dist, "metadata", {}).get("Name") == BUILTIN_DIST for e in real_eps())
    pm, problems = make_manager(entry_points=eps)
    assert problems == []
    order = [n for n, _ in pm.list_name_plugin()]
    assert order[-1] == "aaa_clash"
    reg = build_registry(pm, problems)
    import petseg_bench_models.unet as builtin_unet

    assert reg.origins[("model", "unet")] == "unet"
    assert reg.models["unet"].build is builtin_unet.build and reg.models["unet"].label == "U-Net"
    assert reg.origins[("model", "clash_net")] == "aaa_clash"  # the rest of it is welcome
    assert reg.problems == ["plugin 'aaa_clash': model 'unet' already provided by 'unet'; ignored"]


def test_load_order_puts_the_builtin_distribution_first():
    def fake(name, dist_name=None):
        dist = None if dist_name is None else SimpleNamespace(metadata={"Name": dist_name})
        return SimpleNamespace(name=name, value=f"pkg.{name}", dist=dist)

    eps = [fake("aaa", "petseg-example-plugin"), fake("zzz", BUILTIN_DIST), fake("bbb"), fake("metrics", BUILTIN_DIST)]
    assert [e.name for e in sorted(eps, key=plugins.load_order)] == ["metrics", "zzz", "aaa", "bbb"]
    assert plugins.load_order(fake("x", BUILTIN_DIST)) < plugins.load_order(fake("a", "other"))


def test_invalid_specs_are_skipped_one_line_each():
    bad = Plugin(models=[model("Bad Name"), pert("not_a_model"), model("point_only", inputs=("point",)),
                         model("good_model")],
                 metrics=[metric("fine_metric"), "just a string"],
                 backbones=[backbone("Has:Colon"), model("not_a_backbone"), backbone("good_backbone")])
    reg = build(("shaky", bad))
    assert set(reg.models) == {"good_model"} and set(reg.metrics) == {"fine_metric"}
    assert set(reg.backbones) == {"good_backbone"}
    assert len(reg.problems) == 6
    for line in reg.problems:
        assert line.startswith("plugin 'shaky': invalid ") and "\n" not in line
    text = "\n".join(reg.problems)
    assert "'Bad Name'" in text and "lower-case" in text
    assert "expected ModelSpec, got PerturbationSpec" in text
    assert "'point_only'" in text and "'image'" in text
    assert "expected MetricSpec, got str" in text
    assert "invalid backbone spec 'Has:Colon'" in text and "expected BackboneSpec, got ModelSpec" in text


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
    reg = build(("alpha", Plugin(models=[model("net")], metrics=[metric("iou")], backbones=[backbone("pool")])),
                ("beta", Plugin(models=[model("net"), model("other")], backbones=[backbone("pool")])))
    assert reg.origins[("model", "net")] == "alpha" and "other" in reg.models
    assert reg.origins[("backbone", "pool")] == "alpha"
    assert reg.problems == ["plugin 'beta': model 'net' already provided by 'alpha'; ignored",
                            "plugin 'beta': backbone 'pool' already provided by 'alpha'; ignored"]
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
    assert {"clip", "efficientnet"} <= set(reg.backbones)
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
