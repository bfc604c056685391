"""Summary scores, the report (Markdown, HTML, PNGs) and `petseg-bench check` on a tiny
synthetic run: two models, two perturbations, levels 1-3, four images with crafted
confusion matrices whose Dice is known by hand."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from petseg_bench.cli import main
from petseg_bench.plugins import get_registry
from petseg_bench.reporting.check import CheckOutcome, check_run
from petseg_bench.reporting.summary import baseline_values, build_summary, curve_scores, robustness_scores
from petseg_bench.results import CLEAN, Cell, load_run, write_cell
from petseg_bench.specs import ModelSpec, PaperFigures
from test_architecture import GENERIC

PERTS = {"gaussian_noise": ("std", [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),
         "occlusion": ("side", [0, 5, 10, 15, 20, 25, 30, 35, 40, 45])}
#: Image sizes relative to each other: the dataset reduction weighs by pixels, the seed one does not.
SCALES = [1, 1, 1, 3]


def cm(k: int, scale: int = 1) -> np.ndarray:
    """Every class has 100 ground-truth pixels, k of them predicted as the next class:
    per-class Dice = 1 - k/100, so mean Dice = 1 - k/100."""
    m = np.zeros((3, 3), np.int64)
    for t in range(3):
        m[t, t] = 100 - k
        m[t, (t + 1) % 3] = k
    return m * scale


# Misclassified pixels per image (4 images) or per cell (all 4 the same).
CELLS = {
    "unet": {CLEAN: [0, 10, 20, 30],  # seed: 1 - 15/100 = 0.85; dataset: 1 - 120/600 = 0.80
             "gaussian_noise": [20, 30, 40],  # Dice 0.8, 0.7, 0.6
             "occlusion": [10, 10, 30]},  # 0.9, 0.9, 0.7
    "point_clip_unet": {CLEAN: [10, 10, 10, 10],  # 0.9
                        "gaussian_noise": [10, 20, 20],  # 0.9, 0.8, 0.8
                        "occlusion": [10, 10, 10]},  # 0.9, 0.9, 0.9
}


def make_run(run_dir: Path, ids: list[str], models=("unet", "point_clip_unet"), fingerprint: str | None = None,
             extra: dict | None = None) -> Path:
    for model in models:
        spec = CELLS[model]
        write_cell(run_dir, Cell(model, CLEAN, 0), ids, np.stack([cm(k, s) for k, s in zip(spec[CLEAN], SCALES)]), 0.0)
        for p, ks in spec.items():
            if p == CLEAN:
                continue
            for level, k in enumerate(ks, start=1):
                cms = np.stack([cm(k, s) for s in SCALES])
                write_cell(run_dir, Cell(model, p, level), ids, cms, float(PERTS[p][1][level]))
    run = {
        "models": list(models), "perturbations": list(PERTS), "levels": [1, 2, 3], "seed": 0, "limit": None,
        "void": "nearest", "image_ids": ids, "data_fingerprint": fingerprint,
        "checkpoints": {m: f"{i}abc" * 4 for i, m in enumerate(models)},
        "code_version": "0.1.0+gtest", "packages": {"python": "3.11", "numpy": np.__version__},
        "hardware": "test machine", "runtime": "cpu, fp32",
        "perturbation_params": {p: {"param": param, "values": vals} for p, (param, vals) in PERTS.items()},
        "started": "2026-01-01T00:00:00+00:00",
        "model_info": {
            "unet": {"checkpoint": "ck/unet/best.pt", "sha256": "0abc" * 4, "backbone": None,
                     "eval_click_rule": None, "in_size": 64, "base_channels": 8, "epoch": 3, "val": {"val_miou": 0.5}},
            "point_clip_unet": {"checkpoint": "ck/point_clip_unet/best.pt", "sha256": "1abc" * 4,
                                "backbone": {"key": "clip:ViT-B-32:none", "label": "CLIP ViT-B-32 (random init)",
                                             "random_init": True},
                                "eval_click_rule": "the pixel deepest inside the pet", "in_size": 64,
                                "base_channels": 8, "epoch": 3, "val": {"val_miou": 0.6}},
        },
        "cells_computed": 14, "image_levels_per_s": 123.4, "wall_seconds": 5.0,
        **(extra or {}),
    }
    run["model_info"] = {m: v for m, v in run["model_info"].items() if m in models}
    (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir


IDS = ["img_a", "img_b", "img_c", "img_d"]

#: What the built-in plugins declare about the two test models (labels, the seed's figures,
#: which one is the reference of corruption errors),
#: so the report tests do not depend on the plugins' current data.
TEST_SPECS = {
    "unet": ModelSpec("unet", build=lambda cfg: None, label="U-Net", reference=True,
                      paper=PaperFigures("U-Net", (0.68, 0.75, 0.87), (0.84, 0.68, 0.52))),
    "point_clip_unet": ModelSpec("point_clip_unet", build=lambda cfg: None, label="PointCLIP+U-Net",
                                 paper=PaperFigures("PointCLIP+U-Net", ((0.70, 0.71), (0.81, 0.82), None),
                                                    conditions="pretrained backbone",
                                                    robustness="Dice stays within 2 points of clean.")),
}


@pytest.fixture(autouse=True)
def model_specs(monkeypatch):
    models = get_registry().models
    for name, spec in TEST_SPECS.items():
        monkeypatch.setitem(models, name, spec)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run", IDS)


@pytest.fixture
def summary(run_dir) -> dict:
    return build_summary(load_run(run_dir), json.loads((run_dir / "run.json").read_text()), n_boot=50)


# --- summary scores against hand-computed values ---------------------------------------------

def test_clean_metrics_both_reductions(summary):
    unet = summary["clean"]["unet"]
    assert unet["seed"]["mdice"] == pytest.approx(0.85)
    assert unet["dataset"]["mdice"] == pytest.approx(0.80)  # the 3x larger image weighs 3x
    for reduction in ("dataset", "seed"):
        block = unet[reduction]
        assert set(block["iou"]) == set(block["dice"]) == {"background", "cat", "dog"}
        lo, hi = block["mdice_ci95"]
        assert lo <= block["mdice"] <= hi
    # IoU of a class with tp = 100 - k, gt = pred = 100: (100 - k) / (100 + k)
    assert summary["clean"]["point_clip_unet"]["seed"]["iou"]["cat"] == pytest.approx(90 / 110, abs=1e-6)
    assert summary["clean"]["point_clip_unet"]["seed"]["pixel_accuracy"] == pytest.approx(0.9)


def test_curves_share_the_clean_cell_at_level_0(summary):
    noise = summary["curves"]["unet"]["gaussian_noise"]
    assert noise["levels"] == [0, 1, 2, 3]
    assert noise["seed"] == pytest.approx([0.85, 0.8, 0.7, 0.6])
    assert noise["dataset"] == pytest.approx([0.80, 0.8, 0.7, 0.6])
    assert summary["curves"]["unet"]["occlusion"]["seed"][0] == noise["seed"][0]
    assert summary["perturbation_params"]["gaussian_noise"]["values"][:4] == [0, 2, 4, 6]


def test_summary_scores_by_hand(summary):
    scores = summary["scores"]
    assert scores["reduction"] == "seed" and scores["reference_in_run"]
    unet, other = scores["models"]["unet"], scores["models"]["point_clip_unet"]
    n = unet["perturbations"]["gaussian_noise"]
    assert n["mean_dice"] == pytest.approx(0.7)
    assert n["relative_robustness"] == pytest.approx(0.7 / 0.85, abs=1e-6)
    # trapezoids over levels 0..3 / 3
    assert n["auc"] == pytest.approx((0.825 + 0.75 + 0.65) / 3, abs=1e-6)
    o = unet["perturbations"]["occlusion"]
    assert o["mean_dice"] == pytest.approx(2.5 / 3, abs=1e-6)
    assert o["auc"] == pytest.approx((0.875 + 0.9 + 0.8) / 3, abs=1e-6)
    assert unet["mce"] == pytest.approx(1.0) and unet["relative_mce"] == pytest.approx(1.0)

    n = other["perturbations"]["gaussian_noise"]
    assert n["mean_dice"] == pytest.approx(2.5 / 3, abs=1e-6)
    assert n["relative_robustness"] == pytest.approx((2.5 / 3) / 0.9, abs=1e-6)
    assert n["auc"] == pytest.approx((0.9 + 0.85 + 0.8) / 3, abs=1e-6)
    assert n["ce"] == pytest.approx(0.5 / 0.9, abs=1e-6)  # sum(1 - D) / sum(1 - D_unet)
    assert n["relative_ce"] == pytest.approx(0.2 / 0.45, abs=1e-6)  # sum(0.9 - D) / sum(0.85 - D_unet)
    o = other["perturbations"]["occlusion"]
    assert o["relative_robustness"] == pytest.approx(1.0)
    assert o["ce"] == pytest.approx(0.3 / 0.5, abs=1e-6)
    assert o["relative_ce"] == pytest.approx(0.0, abs=1e-6)  # no drop at all; unet dropped 0.05 in sum
    assert other["mce"] == pytest.approx((0.5 / 0.9 + 0.6) / 2, abs=1e-6)
    assert other["relative_mce"] == pytest.approx((0.2 / 0.45 + 0.0) / 2, abs=1e-6)
    assert other["mean_dice"] == pytest.approx((2.5 / 3 + 0.9) / 2, abs=1e-6)


def test_scores_without_unet_or_with_a_zero_denominator(tmp_path):
    run_dir = make_run(tmp_path / "run", IDS, models=("point_clip_unet",))
    s = build_summary(load_run(run_dir), json.loads((run_dir / "run.json").read_text()), n_boot=0)
    other = s["scores"]["models"]["point_clip_unet"]
    assert not s["scores"]["reference_in_run"]
    assert other["mce"] is None and other["relative_mce"] is None
    assert other["perturbations"]["occlusion"]["ce"] is None
    assert other["perturbations"]["occlusion"]["mean_dice"] == pytest.approx(0.9)
    assert "mdice_ci95" not in s["clean"]["point_clip_unet"]["seed"]

    # unet never drops below its clean Dice: relative CE is undefined, so is relative mCE
    flat = robustness_scores({"unet": 0.8, "m": 0.9}, {"unet": {"p": {1: 0.8, 2: 0.8}}, "m": {"p": {1: 0.7, 2: 0.9}}},
                             ["p"], reference="unet")
    assert flat["m"]["perturbations"]["p"]["relative_ce"] is None
    assert flat["m"]["relative_mce"] is None
    assert flat["m"]["perturbations"]["p"]["ce"] == pytest.approx(0.4 / 0.4)


def test_only_levels_present_count():
    # levels 1 and 3 only: the trapezoid spans 0-1 and 1-3, normalised by the top level 3
    got = curve_scores(0.85, {1: 0.8, 3: 0.6})
    assert got["levels"] == [1, 3]
    assert got["mean_dice"] == pytest.approx(0.7)
    assert got["auc"] == pytest.approx((0.825 + 1.4) / 3, abs=1e-6)
    assert curve_scores(0.85, {})["auc"] is None


def test_baseline_values(summary):
    b = baseline_values(summary)
    assert b["reduction"] == "seed"
    assert b["models"]["unet"]["clean_mdice"] == pytest.approx(0.85)
    assert b["models"]["point_clip_unet"]["perturbations"]["occlusion"] == pytest.approx(0.9)


# --- the report ---------------------------------------------------------------------------------

def test_write_report_with_example_strips(tmp_path, make_dataset):
    from petseg_bench.data.cache import prepare
    from petseg_bench.reporting import write_report

    root = make_dataset(n_cat=2, n_dog=2)
    test = prepare(root, "test", "nearest", tmp_path / "cache")
    run_dir = make_run(tmp_path / "run", list(test.names), fingerprint=test.fingerprint)
    paths = write_report(run_dir, data_root=root, cache_dir=tmp_path / "cache", n_boot=50)

    names = {p.name for p in paths}
    assert {"summary.json", "report.md", "index.html"} <= names
    pngs = sorted((run_dir / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {f"{kind}-{p}.png" for kind in ("dice", "example") for p in PERTS}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    raw = (run_dir / "index.html").read_text()
    assert "{{" not in raw and "{%" not in raw
    html = unescape(raw)  # autoescape writes ' as &#39;
    for text in ("U-Net", "PointCLIP+U-Net", "mIoU seed", "PixAcc dataset", "relative mCE", "0 (clean)",
                 "seed study (full dataset, GPU)", "0.70–0.71", "gaussian_noise", "Provenance",
                 "0.1.0+gtest", "the pixel deepest inside the pet"):
        assert text in html, text
    assert re.search(r"random-init backbone: not comparable with the seed's pretrained-backbone results", html, re.I)
    srcs = set(re.findall(r'<img src="([^"]+)"', raw))
    assert srcs == {f"plots/{p.name}" for p in pngs}

    md = (run_dir / "report.md").read_text()
    assert "| model" in md and "![" in md and "Example images skipped" not in md
    assert "85.0" in md  # unet clean mDice (seed reduction) in percent, 1 decimal
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["scores"]["models"]["unet"]["mce"] == pytest.approx(1.0)


def test_report_without_data_skips_strips_with_a_note(run_dir):
    from petseg_bench.reporting import write_report

    paths = write_report(run_dir, n_boot=0)
    assert not list((run_dir / "plots").glob("example-*.png"))
    assert len(list((run_dir / "plots").glob("dice-*.png"))) == len(PERTS)
    assert "Example images skipped" in (run_dir / "report.md").read_text()
    assert "Example images skipped" in (run_dir / "index.html").read_text()
    assert all(p.is_file() for p in paths)


def test_report_command(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["report", str(run_dir), "--data-root", str(tmp_path / "no-data")])
    assert result.exit_code == 0, result.output
    assert "index.html" in result.stdout and "plots" in result.stdout
    assert "Example images skipped" in (run_dir / "report.md").read_text()

    result = CliRunner().invoke(main, ["report", str(tmp_path / "not-a-run")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("Error: no run.json")


# --- check ---------------------------------------------------------------------------------------

def run_check(run_dir: Path, baseline: Path, *extra: str):
    return CliRunner().invoke(main, ["check", str(run_dir), "--baseline", str(baseline), *extra])


@pytest.fixture
def baseline(run_dir, tmp_path) -> Path:
    path = tmp_path / "baseline.json"
    result = run_check(run_dir, path, "--update-baseline")
    assert result.exit_code == 0, result.output
    assert path.is_file() and "baseline written" in result.stdout
    return path


def edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_update_baseline_then_check_passes(run_dir, baseline):
    data = json.loads(baseline.read_text())
    assert data["reduction"] == "seed" and data["tolerance"] == 0.02
    assert data["models"]["unet"]["clean_mdice"] == pytest.approx(0.85)
    assert set(data["models"]["unet"]["perturbations"]) == set(PERTS)
    result = run_check(run_dir, baseline)
    assert result.exit_code == 0, result.output
    for word in ("model", "metric", "baseline", "now", "delta", "status", "clean mDice", "occlusion mean Dice"):
        assert word in result.stdout
    assert "REGRESSED" not in result.stdout


def test_check_within_tolerance_and_improvements_pass(run_dir, baseline):
    def fn(d):
        d["models"]["unet"]["clean_mdice"] += 0.015  # now is 0.015 lower: within 0.02
        d["models"]["unet"]["perturbations"]["occlusion"] -= 0.1  # now is better

    edit(baseline, fn)
    result = run_check(run_dir, baseline)
    assert result.exit_code == 0, result.output
    assert "improved" in result.stdout


def test_check_past_tolerance_fails_naming_the_metric(run_dir, baseline):
    edit(baseline, lambda d: d["models"]["point_clip_unet"]["perturbations"].__setitem__("gaussian_noise", 0.9))
    result = run_check(run_dir, baseline)
    assert result.exit_code == 1
    row = next(line for line in result.stdout.splitlines() if "REGRESSED" in line)
    assert "point_clip_unet" in row and "gaussian_noise mean Dice" in row and "-0.0667" in row
    assert "point_clip_unet gaussian_noise mean Dice" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # a looser tolerance on the command line wins over the baseline's
    assert run_check(run_dir, baseline, "--tolerance", "0.1").exit_code == 0


def test_check_missing_model_or_cell_fails(run_dir, baseline):
    def fn(d):
        d["models"]["clip_unet"] = {"clean_mdice": 0.8, "perturbations": {"occlusion": 0.7}}
        d["models"]["unet"]["perturbations"]["salt_and_pepper"] = 0.5

    edit(baseline, fn)
    result = run_check(run_dir, baseline)
    assert result.exit_code == 1
    missing = [line for line in result.stdout.splitlines() if "MISSING" in line]
    assert len(missing) == 3
    assert any("clip_unet" in line and "clean mDice" in line for line in missing)
    assert any("salt_and_pepper" in line for line in missing)
    assert "missing from the run" in result.stderr


def test_check_missing_cells_of_a_run_fail(run_dir, baseline):
    for path in (run_dir / "cells" / "point_clip_unet").glob("occlusion-L*.parquet"):
        path.unlink()
    result = run_check(run_dir, baseline)
    assert result.exit_code == 1
    assert any("MISSING" in line and "occlusion" in line and "point_clip_unet" in line
               for line in result.stdout.splitlines())


def test_check_without_baseline_is_one_error_line(run_dir, tmp_path):
    result = run_check(run_dir, tmp_path / "nope.json")
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: baseline") and "--update-baseline" in lines[0]


def test_check_run_returns_the_text_and_the_failure(run_dir, tmp_path):
    path = tmp_path / "base.json"
    written = check_run(run_dir, path, None, update=True)
    assert written.error is None and written.text.startswith("baseline written:")
    passed = check_run(run_dir, path, None, update=False)
    assert isinstance(passed, CheckOutcome) and passed.error is None
    assert "clean mDice" in passed.text and passed.text.splitlines()[-1].startswith("ok: ")
    edit(path, lambda d: d["models"]["unet"].__setitem__("clean_mdice", 0.95))
    failed = check_run(run_dir, path, None, update=False, reference_model="point_clip_unet")
    assert failed.error and "unet clean mDice" in failed.error and "\n" not in failed.error
    assert "REGRESSED" in failed.text and "ok:" not in failed.text


# --- what the report says about each model -------------------------------------------------------

def test_labels_name_the_backbone_everywhere(run_dir):
    from petseg_bench.reporting import write_report

    write_report(run_dir, n_boot=0, examples=False)
    md = (run_dir / "report.md").read_text()
    html = unescape((run_dir / "index.html").read_text())
    shown = "PointCLIP+U-Net [CLIP ViT-B-32 (random init)]"
    for text in (md, html):
        assert text.count(shown) >= 5  # clean, per class, robustness, scores, provenance, warning
        assert "| U-Net " in md and not re.search(r"(?<!PointCLIP\+)U-Net \[", text)  # no backbone: bare name
        assert "Dice stays within 2 points of clean." in text  # the spec's robustness note
        assert "PointCLIP+U-Net (pretrained backbone)" in text  # the paper's conditions
        assert "provided baseline (paper only)" in text
    provenance = md.split("## Provenance")[1]
    assert "| backbone" in provenance and "CLIP ViT-B-32 (random init)" in provenance
    assert "1abc1abc1abc1abc" in provenance and "ck/point_clip_unet/best.pt" in provenance


def test_a_model_whose_plugin_is_missing_keeps_its_name(run_dir, monkeypatch):
    from petseg_bench.reporting import write_report

    monkeypatch.delitem(get_registry().models, "point_clip_unet")
    write_report(run_dir, n_boot=0, examples=False)
    md = (run_dir / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| point_clip_unet [CLIP ViT-B-32"))
    assert row.rstrip(" |").endswith("—")  # no paper figures
    assert "Dice stays within 2 points of clean." not in md
    assert "published no robustness figures" in md


def test_reference_model_is_a_parameter(run_dir):
    from petseg_bench.reporting import write_report

    write_report(run_dir, n_boot=0, examples=False, reference_model="point_clip_unet")
    scores = json.loads((run_dir / "summary.json").read_text())["scores"]
    assert scores["reference_model"] == "point_clip_unet" and scores["reference_in_run"]
    assert scores["models"]["point_clip_unet"]["mce"] == pytest.approx(1.0)
    assert scores["models"]["unet"]["mce"] == pytest.approx((0.9 / 0.5 + 0.5 / 0.3) / 2, abs=1e-6)  # inverse CEs
    assert "ref = PointCLIP+U-Net [CLIP ViT-B-32 (random init)]" in (run_dir / "report.md").read_text()


def test_the_core_names_no_built_in_model():
    """Labels, figures and backbones of models are plugin data: the reporting code, the
    metrics and the run-folder layout never spell a built-in model's name."""
    package = Path(__file__).resolve().parents[1] / "petseg_bench"
    files = [*sorted((package / "reporting").rglob("*.py")), *sorted((package / "reporting").rglob("*.j2")),
             package / "metrics.py", package / "results.py"]
    for path in files:  # generic words (the "point" input kind, clipping, checkpoints) aside
        hits = [line for line in path.read_text().splitlines()
                if re.search(r"clip|point|autoencoder", GENERIC.sub("", line.lower()))]
        assert not hits, f"{path.name}: {hits}"
    strips = (package / "reporting" / "strips.py").read_text()
    assert "sweep" not in strips and "perturb(" in strips  # the one perturbation path, not the engine's


# --- the committed reference report --------------------------------------------------------------

def assert_same_numbers(expected, got, where="summary"):
    """Every entry of ``expected`` is in ``got`` with the same value (floats to the 6
    decimals summary.json keeps); entries only ``got`` has are additions and pass."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), where
        for key, value in expected.items():
            assert key in got, f"{where}.{key} is missing"
            assert_same_numbers(value, got[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for k, (a, b) in enumerate(zip(expected, got)):
            assert_same_numbers(a, b, f"{where}[{k}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-6, rel=0), where
    else:
        assert got == expected, where


def test_quick_cpu_summary_is_reproduced(tmp_path):
    import shutil

    from petseg_bench.reporting.summary import load_summary

    committed = Path(__file__).resolve().parents[1] / "reports" / "quick-cpu"
    run_dir = tmp_path / "quick-cpu"
    run_dir.mkdir()
    shutil.copy(committed / "run.json", run_dir / "run.json")
    shutil.copytree(committed / "cells", run_dir / "cells")
    expected = json.loads((committed / "summary.json").read_text())
    _, summary = load_summary(run_dir, n_boot=expected["bootstrap"]["n_boot"],
                              reference_model=expected["scores"]["reference_model"])
    assert_same_numbers(expected, json.loads(json.dumps(summary)))


def test_an_unreadable_cell_is_an_error_naming_it_never_a_thinner_report(tmp_path):
    from petseg_bench.errors import PetsegError

    run_dir = tmp_path / "run"
    write_cell(run_dir, Cell("unet", CLEAN, 0), ["a", "b"], np.ones((2, 3, 3), np.int64), 0.0)
    assert len(load_run(run_dir)) == 2
    bad = run_dir / "cells" / "unet" / "gaussian_noise-L1.parquet"
    bad.write_bytes(b"PAR1 truncated")
    with pytest.raises(PetsegError, match=r"gaussian_noise-L1.parquet is unreadable .*--resume"):
        load_run(run_dir)
