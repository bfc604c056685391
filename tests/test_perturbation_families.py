"""Corruption families (``PerturbationSpec.family``): mCE per family, never blended.

A tiny synthetic run (two models, two images, levels 1-2, crafted confusion matrices whose
Dice is known by hand) with perturbations of two families and, in one case, one of no
family. The figures below are computed by hand from the formulas the report states.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from petseg_bench.plugins import get_registry
from petseg_bench.reporting import write_report
from petseg_bench.reporting.summary import build_summary, family_scores, perturbation_families
from petseg_bench.reporting.tables import family_table, short_names
from petseg_bench.results import CLEAN, Cell, load_run, write_cell
from petseg_bench.specs import PerturbationSpec


def cm(k: int) -> np.ndarray:
    """Each class: 100 ground-truth pixels, k predicted as the next class -> Dice 1 - k/100."""
    m = np.zeros((3, 3), np.int64)
    for t in range(3):
        m[t, t], m[t, (t + 1) % 3] = 100 - k, k
    return m


# Misclassified pixels per level (1, 2); clean is level 0. Dice = 1 - k/100.
CELLS = {
    "ref": {CLEAN: [10], "fa_one": [20, 40], "fa_two": [30, 30], "fb_one": [50, 50], "loose": [20, 20]},
    "net": {CLEAN: [0], "fa_one": [10, 20], "fa_two": [10, 10], "fb_one": [20, 40], "loose": [40, 40]},
}
FAMILIES = {"fa_one": {"family": "fam-a", "label": "Family A"}, "fa_two": {"family": "fam-a", "label": "Family A"},
            "fb_one": {"family": "fam-b", "label": ""}, "loose": {"family": None, "label": ""}}
# By hand (ref = "ref"): net's CE on fa_one = (0.1 + 0.2) / (0.2 + 0.4) = 0.5, on fa_two =
# 0.2 / 0.6 = 1/3, on fb_one = 0.6 / 1.0 = 0.6; relative CE: fa_one 0.3 / 0.4 = 0.75,
# fa_two 0.2 / 0.4 = 0.5, fb_one 0.6 / 0.8 = 0.75.
MCE_A, REL_MCE_A = (0.5 + 1 / 3) / 2, (0.75 + 0.5) / 2
BLENDED = (0.5 + 1 / 3 + 0.6) / 3  # what a single mCE over both families would (wrongly) say


def make_run(run_dir: Path, perts: list[str], families: dict | None = FAMILIES, models=("ref", "net"),
             skip: tuple[str, str] | None = None) -> Path:
    ids = ["a", "b"]
    for m in models:
        for p, ks in CELLS[m].items():
            if p != CLEAN and (p not in perts or (m, p) == skip):
                continue
            for level, k in enumerate(ks, start=0 if p == CLEAN else 1):
                write_cell(run_dir, Cell(m, p, level), ids, np.stack([cm(k)] * 2), float(level))
    run = {"models": list(models), "perturbations": perts, "levels": [1, 2], "seed": 0, "image_ids": ids,
           "void": "nearest", "perturbation_params": {p: {"param": "severity", "values": [0, 1, 2]} for p in perts}}
    if families is not None:
        run["perturbation_families"] = {p: families[p] for p in perts}
    (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir


def summary_of(run_dir: Path) -> dict:
    return build_summary(load_run(run_dir), json.loads((run_dir / "run.json").read_text()), n_boot=0,
                         reference_model="ref")


# --- the spec field ----------------------------------------------------------------------------


def _spec(**kw) -> PerturbationSpec:
    return PerturbationSpec("p", "x", (0, 1), apply=lambda images, value, rngs: list(images), **kw)


@pytest.mark.parametrize("kw, error", [
    ({}, None),
    ({"family": "imagenet-c", "family_label": "ImageNet-C"}, None),
    ({"family": "seed"}, None),
    ({"family": "ImageNet C"}, "family 'ImageNet C' must be lower-case"),
    ({"family": ""}, "family '' must be lower-case"),
    ({"family": 3}, "family 3 must be lower-case"),
    ({"family_label": "ImageNet-C"}, "family_label is given without a family"),
    ({"family": "a", "family_label": "two\nlines"}, "family_label must be one line"),
])
def test_family_is_validated(kw, error):
    if error is None:
        _spec(**kw).validate()
    else:
        with pytest.raises(ValueError, match=error):
            _spec(**kw).validate()


def test_built_in_families():
    """The seed's eight are one family, ImageNet-C's 15 another, its 4 extra ones a third;
    click perturbations act on clicks and belong to none."""
    reg = get_registry()
    fam = {n: s.family for n, s in reg.perturbations.items()}
    seed = [n for n, f in fam.items() if f == "seed"]
    assert len(seed) == 8 and "gaussian_noise" in seed and "occlusion" in seed
    assert all(fam[n] is None for n, s in reg.perturbations.items() if s.acts_on_clicks)
    ic = sorted(n for n, f in fam.items() if f == "imagenet-c")
    extra = sorted(n for n, f in fam.items() if f == "imagenet-c-extra")
    if ic or extra:  # listed with or without the library (then marked unavailable)
        assert len(ic) == 15 and "imagenet_c_glass_blur" in ic and "imagenet_c_gaussian_blur" not in ic
        assert extra == ["imagenet_c_gaussian_blur", "imagenet_c_saturate", "imagenet_c_spatter",
                         "imagenet_c_speckle_noise"]
        assert reg.perturbations["imagenet_c_fog"].family_label == "ImageNet-C"


# --- per-family scores --------------------------------------------------------------------------


def test_two_families_get_their_own_mce_and_no_run_wide_one(tmp_path):
    s = summary_of(make_run(tmp_path, ["fa_one", "fa_two", "fb_one"]))
    scores = s["scores"]
    assert scores["models"]["net"]["mce"] is None and scores["models"]["net"]["relative_mce"] is None
    fams = scores["families"]
    assert list(fams) == ["fam-a", "fam-b"]
    a, b = fams["fam-a"], fams["fam-b"]
    assert a["label"] == "Family A" and b["label"] == "fam-b"  # no label: the id
    assert a["perturbations"] == ["fa_one", "fa_two"] and a["levels"] == [1, 2]
    assert a["models"]["net"]["mce"] == pytest.approx(MCE_A, abs=1e-6)
    assert a["models"]["net"]["mce"] != pytest.approx(BLENDED, abs=1e-3)
    assert a["models"]["net"]["relative_mce"] == pytest.approx(REL_MCE_A, abs=1e-6)
    assert a["models"]["net"]["clean_mdice"] == pytest.approx(1.0)
    assert a["models"]["net"]["mean_dice"] == pytest.approx((0.9 + 0.8 + 0.9 + 0.9) / 4, abs=1e-6)
    assert b["models"]["net"]["mce"] == pytest.approx(0.6, abs=1e-6)
    assert b["models"]["net"]["relative_mce"] == pytest.approx(0.75, abs=1e-6)
    for fam in fams.values():  # the reference scores 1 by construction
        assert fam["models"]["ref"]["mce"] == pytest.approx(1.0) and fam["models"]["ref"]["relative_mce"] == pytest.approx(1.0)
    # per-corruption CE stays where it was
    assert scores["models"]["net"]["perturbations"]["fa_two"]["ce"] == pytest.approx(1 / 3, abs=1e-6)


def test_one_family_keeps_the_run_wide_figures_unchanged(tmp_path):
    """A run of one family (the seed's eight alone, say) gets no families block: its
    summary is exactly what it was before families existed."""
    s = summary_of(make_run(tmp_path, ["fa_one", "fa_two"]))
    assert "families" not in s["scores"]
    assert s["scores"]["models"]["net"]["mce"] == pytest.approx(MCE_A, abs=1e-6)
    assert s["scores"]["models"]["net"]["relative_mce"] == pytest.approx(REL_MCE_A, abs=1e-6)
    assert list(s["scores"]) == ["reduction", "reference_model", "reference_in_run", "models"]


def test_perturbations_of_no_family_are_a_group_of_their_own(tmp_path):
    s = summary_of(make_run(tmp_path, ["fa_one", "fa_two", "loose"]))
    assert list(s["scores"]["families"]) == ["fam-a"]  # "loose" belongs to none: no block
    assert s["scores"]["families"]["fam-a"]["models"]["net"]["mce"] == pytest.approx(MCE_A, abs=1e-6)
    assert s["scores"]["models"]["net"]["mce"] is None  # it would blend fam-a with "loose"


def test_a_missing_corruption_leaves_only_its_family_undefined(tmp_path):
    s = summary_of(make_run(tmp_path, ["fa_one", "fa_two", "fb_one"], skip=("net", "fa_two")))
    fams = s["scores"]["families"]
    assert fams["fam-a"]["models"]["net"]["mce"] is None  # a mean over 1 of 2 is no mCE
    assert fams["fam-b"]["models"]["net"]["mce"] == pytest.approx(0.6, abs=1e-6)


def test_without_the_reference_no_ce_anywhere(tmp_path):
    s = build_summary(load_run(make_run(tmp_path, ["fa_one", "fb_one"])),
                      json.loads((tmp_path / "run.json").read_text()), n_boot=0, reference_model="absent")
    assert all(f["models"]["net"]["mce"] is None for f in s["scores"]["families"].values())


def test_family_scores_from_plain_rows():
    rows = {"m": {"clean_mdice": 0.9, "perturbations": {
        "x": {"mean_dice": 0.5, "relative_robustness": 0.5, "auc": 0.6, "levels": [1, 2, 3], "ce": 2.0, "relative_ce": 1.0},
        "y": {"mean_dice": 0.7, "relative_robustness": 0.7, "auc": 0.8, "levels": [1, 2], "ce": 4.0, "relative_ce": 3.0},
        "z": {"mean_dice": 0.1, "relative_robustness": 0.1, "auc": 0.1, "levels": [1], "ce": 9.0, "relative_ce": 9.0}}}}
    fams = {"x": {"family": "f", "label": "F"}, "y": {"family": "f", "label": "F"}, "z": {"family": "g", "label": "G"}}
    got = family_scores(rows, ["x", "y", "z"], fams)
    assert got["f"]["models"]["m"] == {"clean_mdice": 0.9, "mean_dice": pytest.approx(0.6), "mce": 3.0,
                                       "relative_mce": 2.0}
    assert got["f"]["levels"] == [1, 2, 3] and got["g"]["models"]["m"]["mce"] == 9.0
    assert family_scores(rows, ["x", "y"], fams) is None  # one family: nothing to split


def test_families_come_from_the_record_else_the_installed_specs():
    run = {"perturbation_families": {"mine": {"family": "fam-a", "label": "A"}}}
    got = perturbation_families(run, ["mine", "gaussian_noise", "not_installed"])
    assert got["mine"] == {"family": "fam-a", "label": "A"}
    assert got["gaussian_noise"]["family"] == "seed" and got["gaussian_noise"]["label"]
    assert got["not_installed"] == {"family": None, "label": ""}


def test_seed_eight_with_imagenet_c_names_are_split_by_the_installed_families(tmp_path):
    """No record of families (an older run.json): the installed specs decide, so the
    seed's gaussian_noise and ImageNet-C's fog are scored apart."""
    if get_registry().perturbations.get("imagenet_c_fog") is None:
        pytest.skip("the ImageNet-C pack is not installed")
    got = perturbation_families({}, ["gaussian_noise", "imagenet_c_fog", "imagenet_c_spatter"])
    assert [got[p]["family"] for p in got] == ["seed", "imagenet-c", "imagenet-c-extra"]


# --- the report ----------------------------------------------------------------------------------


def test_short_names():
    assert short_names(["imagenet_c_gaussian_noise", "imagenet_c_fog"]) == ["gaussian noise", "fog"]
    assert short_names(["contrast_increase", "contrast_decrease", "occlusion"]) == [
        "contrast increase", "contrast decrease", "occlusion"]
    assert short_names(["a_b", "a_bc"]) == ["b", "bc"] and short_names(["only_one"]) == ["only_one"]


def test_family_table_rows(tmp_path):
    s = summary_of(make_run(tmp_path, ["fa_one", "fa_two", "fb_one"]))
    table = family_table(s["scores"]["families"]["fam-a"], s, {})
    assert table.headers[:5] == ["model", "clean mDice %", "mean Dice % (perturbed)", "mCE", "relative mCE"]
    assert table.headers[5:] == ["one", "two"]
    net = next(r for r in table.rows if r[0] == "net")
    assert net[1:] == ["100.0", "87.5", f"{MCE_A:.3f}", f"{REL_MCE_A:.3f}", "0.500", "0.333"]
    assert "ref = ref" in table.caption and "CE_c = Σ_s (1 − D_s,c) / Σ_s (1 − D^ref_s,c)" in table.caption


def test_report_has_a_section_per_family_and_no_blended_mce(tmp_path):
    run_dir = make_run(tmp_path / "run", ["fa_one", "fa_two", "fb_one"])
    paths = write_report(run_dir, n_boot=0, examples=False, reference_model="ref")
    md, html = paths[1].read_text(), paths[2].read_text()
    for text in (md, html):
        assert "Family A: mCE and corruption errors" in text and "fam-b: mCE and corruption errors" in text
        assert "Hendrycks" in text and "never over all of them" in text
    assert f"{MCE_A:.3f}" in md and f"{BLENDED:.3f}" not in md
    assert json.loads((run_dir / "summary.json").read_text())["scores"]["families"]["fam-b"]["perturbations"] == ["fb_one"]


def test_report_of_one_family_has_no_family_section(tmp_path):
    run_dir = make_run(tmp_path / "run", ["fa_one", "fa_two"])
    md = write_report(run_dir, n_boot=0, examples=False, reference_model="ref")[1].read_text()
    assert "mCE and corruption errors" not in md and "never over all of them" not in md
    assert f"{MCE_A:.3f}" in md


def test_an_incomplete_family_says_so(tmp_path):
    """A run with some of a family's perturbations (zoom blur filtered out, say): the mean
    is over those in the run, and the summary and the report say it is not the full mCE."""
    rows = {"m": {"clean_mdice": 0.9, "perturbations": {
        "x": {"mean_dice": 0.5, "relative_robustness": 0.5, "auc": 0.6, "levels": [1], "ce": 2.0, "relative_ce": 1.0},
        "z": {"mean_dice": 0.1, "relative_robustness": 0.1, "auc": 0.1, "levels": [1], "ce": 9.0, "relative_ce": 9.0}}}}
    fams = {"x": {"family": "f", "label": "F"}, "z": {"family": "g", "label": "G"}}
    got = family_scores(rows, ["x", "z"], fams, members=lambda f: ["w", "x"] if f == "f" else None)
    assert got["f"]["members"] == ["w", "x"] and got["f"]["complete"] is False
    assert got["f"]["models"]["m"]["mce"] == 2.0
    assert got["g"]["members"] is None and got["g"]["complete"] is None

    from petseg_bench.reporting.sections import family_section

    summary = {"scores": {"reference_model": "ref", "reference_in_run": True, "reduction": "seed",
                          "models": rows, "families": got}, "models": ["m"]}
    text = family_section("f", got["f"], summary, {}).blocks[0].text
    assert "1 of the family's 2 perturbations (not w)" in text and "not the family's full mCE" in text
    assert "of the family's" not in family_section("g", got["g"], summary, {}).blocks[0].text


def test_installed_members_of_a_family():
    from petseg_bench.reporting.summary import declared_members

    assert len(declared_members("seed")) == 8 and declared_members("no-such-family") is None
    if get_registry().perturbations.get("imagenet_c_fog") is not None:
        assert len(declared_members("imagenet-c")) == 15 and len(declared_members("imagenet-c-extra")) == 4
