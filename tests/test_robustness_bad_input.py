"""Issue 14's bad input, case by case: a click perturbation for a model without a click
input, the ImageNet-C library missing, a corruption on a tiny image.

Each case says what happens (skipped with a note, one line naming the extra, handled, or
one line naming the perturbation and the image) and is checked table by table.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from petseg_bench.cli import main
from petseg_bench.engine.sweep import applies
from petseg_bench.errors import PluginError
from petseg_bench.perturbation import perturb
from petseg_bench.plugins import get_registry
from petseg_bench.reporting import write_report
from petseg_bench.reporting.summary import build_summary
from petseg_bench.reporting.tables import NA, click_table
from petseg_bench.results import CLEAN, Cell, load_run, write_cell
from petseg_bench.specs import PerturbationSpec

from petseg_bench_perturbations import imagenet_c

from conftest import one_error_line

NEEDS_LIBRARY = pytest.mark.skipif(imagenet_c.installed_version() is None,
                                   reason=f"{imagenet_c.LIBRARY} is not installed ({imagenet_c.INSTALL_HINT})")


def _same(images, value, rngs):
    return [np.array(i, copy=True) for i in images]


PIXELS = PerturbationSpec("pix", "x", (0, 1), _same)
CLICKS = PerturbationSpec("clk", "x", (0, 1), _same, target="clicks", apply_clicks=lambda c, labels, v, r: c)


# --- a click perturbation for a model without a click input ---------------------------------------


@pytest.mark.parametrize("spec, inputs, computed", [
    (CLICKS, ("image",), False),  # skipped (the sweep logs a note; the report shows n/a)
    (CLICKS, ("image", "backbone"), False),
    (CLICKS, ("image", "point"), True),
    (CLICKS, ("image", "point", "backbone"), True),
    (PIXELS, ("image",), True),
    (PIXELS, ("image", "point"), True),
    (None, ("image",), True),  # the clean cell
])
def test_which_cells_a_model_gets(spec, inputs, computed):
    assert applies(spec, inputs) is computed


def test_click_perturbations_on_pixel_only_models_report_n_a_not_an_error(tmp_path):
    """A run of pixel-only models asked for click perturbations (as `--models all` may be):
    the sweep wrote their clean cells only; the summary and the report are made, with n/a.
    (The sweep's note is checked on real tiny models in test_click_perturbations.py.)"""
    run_dir = tmp_path / "run"
    k = np.zeros((2, 3, 3), np.int64)
    k[:, [0, 1, 2], [0, 1, 2]] = 100
    for m in ("a", "b"):
        write_cell(run_dir, Cell(m, CLEAN, 0), ["x", "y"], k, 0.0)
        write_cell(run_dir, Cell(m, "gaussian_noise", 1), ["x", "y"], k, 2.0)
    run = {"models": ["a", "b"], "perturbations": ["gaussian_noise", "click_jitter"], "levels": [1],
           "click_perturbations": ["click_jitter"], "image_ids": ["x", "y"], "seed": 0, "void": "nearest"}
    (run_dir / "run.json").write_text(json.dumps(run))
    summary = build_summary(load_run(run_dir), run, n_boot=0)
    assert summary["perturbations"] == ["gaussian_noise"] and summary["click_perturbations"] == ["click_jitter"]
    rows = click_table(summary, {}).rows
    assert [r[1] for r in rows] == ["a", "b"] and all(set(r[2:-1]) == {NA} for r in rows)
    md = write_report(run_dir, n_boot=0, examples=False)[1].read_text()
    assert "Click robustness" in md and NA in md


# --- the corruption library missing ---------------------------------------------------------------

HINT = "pip install 'petseg-bench[imagenet-c]'"


@pytest.fixture
def without_library(monkeypatch):
    """The installed registry as a user without the extra sees it."""
    monkeypatch.setattr(imagenet_c, "installed_version", lambda: None)
    line = imagenet_c.missing_extra()
    reg = get_registry()
    perts = {n: s for n, s in reg.perturbations.items() if not n.startswith(imagenet_c.PREFIX)}
    perts.update({s.name: s for s in imagenet_c.petseg_bench_perturbations()})
    assert all(s.unavailable == line for s in imagenet_c.petseg_bench_perturbations())
    patched = dataclasses.replace(reg, perturbations=perts)
    monkeypatch.setattr("petseg_bench.plugins.get_registry", lambda: patched)
    return patched


@pytest.mark.parametrize("pattern, expect", [
    ("imagenet_c_fog", "error"),
    ("imagenet_c_*", "error"),
    ("imagenet_c_*blur", "error"),
    ("gaussian_noise,imagenet_c_fog", "error"),
    ("click_*,imagenet_c_*", "error"),
    ("all", {"gaussian_noise", "occlusion", "click_jitter", "click_wrong"}),  # the pack left out, no warning
    ("*blur", {"gaussian_blur"}),  # a wildcard that also matches installed ones: those, no warning
    ("click_*", {"click_centroid", "click_jitter", "click_random_fg", "click_wrong"}),
])
def test_selection_without_the_library(without_library, pattern, expect):
    if expect == "error":
        with pytest.raises(PluginError) as info:
            without_library.select("perturbation", pattern)
        assert HINT in str(info.value) and "\n" not in str(info.value) and "imagenet_c_" in str(info.value)
    else:
        chosen = without_library.select("perturbation", pattern)
        assert expect <= set(chosen) and not [n for n in chosen if n.startswith("imagenet_c_")]
        if pattern != "all":
            assert set(chosen) == expect


@pytest.mark.parametrize("args", [
    ["run", "--perturbations", "imagenet_c_fog"],
    ["run", "--models", "all", "--perturbations", "click_*,imagenet_c_*"],
])
def test_run_without_the_library_is_one_line_naming_the_extra(without_library, tmp_path, args):
    result = CliRunner().invoke(main, [*args, "--checkpoints", str(tmp_path / "ck"), "--out", str(tmp_path / "out"),
                                       "--data-root", str(tmp_path / "data")])
    assert result.exit_code != 0
    line = one_error_line(result.stderr)
    assert HINT in line and "not available" in line
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_list_without_the_library_shows_the_pack_as_unavailable(without_library):
    result = CliRunner().invoke(main, ["list", "imagenet_c_*"])
    assert result.exit_code == 0, result.output
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith("imagenet_c_")]
    assert len(rows) == 19 and all("unavailable" in r for r in rows)


@NEEDS_LIBRARY
def test_list_with_the_library_shows_the_pack_and_the_click_perturbations():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    rows = {ln.split()[0]: ln for ln in result.stdout.splitlines() if ln.strip()}
    for name in [*(f"imagenet_c_{n}" for n in imagenet_c.ALL), "click_jitter", "click_random_fg", "click_centroid",
                 "click_wrong"]:
        assert name in rows and "unavailable" not in rows[name], name
    assert "severity: 0, 1, 2, 3, 4, 5" in rows["imagenet_c_zoom_blur"]


# --- tiny images -----------------------------------------------------------------------------------


def tiny(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, shape, dtype=np.uint8)


@NEEDS_LIBRARY
@pytest.mark.parametrize("name", imagenet_c.ALL)
def test_every_corruption_handles_16_by_16_through_the_harness(name):
    """Each of the 19, every severity, on a 16 x 16 image (and a 16 x 23 one) in one batch,
    through the sweep's own perturbation path: handled, no warning, same shapes."""
    spec = get_registry().perturbations[f"imagenet_c_{name}"]
    images = [tiny((16, 16, 3)), tiny((16, 23, 3), 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for level in range(1, len(spec.levels)):
            out = perturb(spec, images, level, ["tiny_a", "tiny_b"], seed=0)
            assert [o.shape for o in out] == [i.shape for i in images] and all(o.dtype == np.uint8 for o in out)


@NEEDS_LIBRARY
def test_an_image_too_small_for_a_corruption_is_one_line_naming_it():
    """pixelate needs a block a side: a 3 x 2 image fails at severity 5. The line names the
    perturbation, the level and the image's id and size (not only its place in the batch)."""
    spec = get_registry().perturbations["imagenet_c_pixelate"]
    images = [tiny((16, 16, 3)), tiny((16, 16, 3), 1), tiny((3, 2, 3), 2)]
    with pytest.raises(PluginError) as info:
        perturb(spec, images, 5, ["Abyssinian_1", "beagle_2", "tiny_pug_3"], seed=0)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("perturbation imagenet_c_pixelate level 5 failed on image tiny_pug_3 (3x2 px)")
    assert "too small to pixelate" in line


@pytest.mark.parametrize("bad_index", [0, 2])
def test_the_failing_image_is_named_whatever_its_place(bad_index):
    def picky(images, value, rngs):
        if any(i.shape[0] < 8 for i in images):
            raise ValueError("too small")
        return [np.array(i, copy=True) for i in images]

    spec = PerturbationSpec("picky", "x", (0, 1), picky)
    images = [tiny((16, 16, 3)) for _ in range(3)]
    images[bad_index] = tiny((4, 5, 3))
    with pytest.raises(PluginError, match=rf"picky level 1 failed on image id{bad_index} \(4x5 px\): "
                                          r"ValueError: too small"):
        perturb(spec, images, 1, ["id0", "id1", "id2"], seed=0)


def test_a_batch_only_failure_names_the_batch():
    spec = PerturbationSpec("batchy", "x", (0, 1),
                            lambda images, v, r: (_ for _ in ()).throw(RuntimeError("x")) if len(images) > 1
                            else [np.array(images[0], copy=True)])
    with pytest.raises(PluginError, match=r"failed on the batch of images a\.\. \(each passes alone\)"):
        perturb(spec, [tiny((8, 8, 3)), tiny((8, 8, 3))], 1, ["a", "b"], seed=0)
