"""`petseg-bench check` as a regression gate, without training: synthetic runs written
cell by cell (per-image confusion matrices) through `petseg_bench.results`.

A *world* fixes the test images (pet class, pixel counts) and each model's true
per-image quality per cell; a *run* of it adds what differs between training seeds and
CPUs: a per-(model, figure) quality offset (SD 0.013, at most 0.035) and per-image noise
(SD 0.05), so that a run's figures scatter with an SD of about 0.01 and good runs differ
by up to ~0.03-0.04, as the issue saw. The gate must let such runs pass against a
baseline of 3-5 of them, and catch a planted regression of 0.05+ every time, naming the
figure and the rule.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from petseg_bench.errors import PetsegError
from petseg_bench.reporting import check as check_mod
from petseg_bench.reporting.baseline import (BaselineFigure, build_baseline, figure_of_scores, load_baseline,
                                             read_run_figures)
from petseg_bench.reporting.check import bootstrap_counts, check_run, judge, paired_drop_ci, write_baseline
from petseg_bench.reporting.summary import baseline_values, build_summary
from petseg_bench.results import CLEAN, Cell, load_run, write_cell

MODELS = ("unet", "seg_b", "seg_c")
PERTS = {"gaussian_noise": [0, 4, 8, 12], "occlusion": [0, 10, 20, 30], "contrast_decrease": [1.0, 0.9, 0.7, 0.5]}
LEVELS = (1, 2, 3)
FIGURES = ("clean_mdice", *PERTS)
N_IMAGES = 120
TOL = 0.02
REPO = Path(__file__).resolve().parents[1]


# --- synthetic worlds and runs ------------------------------------------------------------------

@dataclass
class World:
    ids: list[str]
    pet: np.ndarray  # [N] the pet's class, 1 (cat) or 2 (dog)
    g_pet: np.ndarray  # [N] pet pixels in the ground truth
    g_bg: np.ndarray  # [N] background pixels
    quality: dict  # (model, perturbation or CLEAN, level) -> [N] true quality in [0, 1]


def make_world(seed: int) -> World:
    rng = np.random.default_rng(seed)
    ids = [f"img_{k:03d}" for k in range(N_IMAGES)]
    g_pet = rng.integers(300, 1500, N_IMAGES)
    difficulty = rng.normal(0, 0.12, N_IMAGES)
    quality = {}
    for model in MODELS:
        level_0 = rng.uniform(0.6, 0.85)
        quality[(model, CLEAN, 0)] = np.clip(level_0 + difficulty, 0.05, 0.98)
        for p in PERTS:
            for lv in LEVELS:
                quality[(model, p, lv)] = np.clip(level_0 - rng.uniform(0.0, 0.04) * lv + difficulty, 0.05, 0.98)
    return World(ids, rng.integers(1, 3, N_IMAGES), g_pet, 4000 - g_pet, quality)


def noisy(world: World, seed: int, fig_sd: float = 0.013, img_sd: float = 0.05) -> dict:
    """One run's quality: a per-(model, figure) offset shared by its levels, plus per-image noise."""
    rng = np.random.default_rng(seed)
    out = {}
    offsets = {(m, f): float(np.clip(rng.normal(0, fig_sd), -0.035, 0.035)) for m in MODELS for f in [CLEAN, *PERTS]}
    for (m, p, lv), q in world.quality.items():
        out[(m, p, lv)] = np.clip(q + offsets[(m, p)] + rng.normal(0, img_sd, len(q)), 0.0, 1.0)
    return out


def confusions(world: World, quality: np.ndarray, swapped: np.ndarray | None = None) -> np.ndarray:
    """Per-image ``[N, 3, 3]``: a pixels of the pet predicted as background and as many
    background pixels as pet, a = (1 - quality) * pet pixels; ``swapped`` images have their
    pet predicted as the other pet class."""
    cms = np.zeros((len(world.ids), 3, 3), np.int64)
    a = np.round((1 - quality) * world.g_pet).astype(np.int64)
    n, c = np.arange(len(world.ids)), world.pet
    shown = c if swapped is None else np.where(swapped, 3 - c, c)
    cms[n, c, shown] = world.g_pet - a
    cms[n, c, 0] = a
    cms[n, 0, shown] = a
    cms[n, 0, 0] = world.g_bg - a
    return cms


def write_run(run_dir: Path, world: World, quality: dict, seed: int = 0, swapped: dict | None = None,
              models=MODELS) -> Path:
    for (m, p, lv), q in quality.items():
        if m in models:
            value = 0.0 if p == CLEAN else float(PERTS[p][lv])
            write_cell(run_dir, Cell(m, p, lv), world.ids, confusions(world, q, (swapped or {}).get(m)), value)
    record = {"models": list(models), "perturbations": list(PERTS), "levels": list(LEVELS), "seed": seed,
              "void": "nearest", "image_ids": world.ids, "runtime": f"cpu (test), {'bf16' if seed % 2 else 'fp32'}",
              "hardware": "test machine", "code_version": "0.1.0+gtest",
              "perturbation_params": {p: {"param": "x", "values": v} for p, v in PERTS.items()}}
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


def degrade(world: World, quality: dict, model: str, fraction: float, by: float, seed: int) -> dict:
    """``model``'s masks made worse on ``fraction`` of the images, in every cell."""
    hit = np.random.default_rng(seed).permutation(len(world.ids))[: int(fraction * len(world.ids))]
    out = dict(quality)
    for key, q in quality.items():
        if key[0] == model:
            q = q.copy()
            q[hit] = np.maximum(q[hit] - by, 0.0)
            out[key] = q
    return out


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(1)


@pytest.fixture(scope="module")
def good_runs(world, tmp_path_factory) -> list[Path]:
    """Eight good runs of one world: four make the baseline, four are checked against it."""
    root = tmp_path_factory.mktemp("runs")
    return [write_run(root / f"s{s}", world, noisy(world, 100 + s), seed=s) for s in range(8)]


@pytest.fixture(scope="module")
def baseline_file(good_runs, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "baseline.json"
    written = write_baseline(good_runs[:4], path, TOL)
    assert written.error is None and "4 runs" in written.text
    return path


def rows(outcome) -> dict[tuple[str, str], list[str]]:
    """(model, metric) -> the table row's cells."""
    out = {}
    for line in outcome.text.splitlines():
        cells = [c for c in line.split("  ") if c.strip()]
        if len(cells) >= 8 and cells[0].strip() in MODELS:
            out[(cells[0].strip(), cells[1].strip())] = [c.strip() for c in cells]
    return out


# --- (a) good runs pass, (b) planted regressions fail ---------------------------------------------

def test_good_runs_differ_as_much_as_seeds_and_cpus_do(good_runs):
    """The noise is the issue's: against one other good run, the old rule (no spread, no
    pairing) fails figures; against each other, good runs differ by up to ~0.03."""
    figures = [read_run_figures(r).figures for r in good_runs]
    diffs = np.array([[figures[i][m][f] - figures[0][m][f] for m in MODELS for f in FIGURES] for i in range(1, 8)])
    assert 0.02 < np.abs(diffs).max() < 0.05
    assert (diffs < -TOL).any()  # what the old gate called a regression


def test_good_runs_pass_a_baseline_of_four(good_runs, baseline_file):
    for run in good_runs[4:]:
        outcome = check_run(run, baseline_file, None, update=False)
        assert outcome.error is None, outcome.error
        table = rows(outcome)
        assert len(table) == len(MODELS) * len(FIGURES)
        assert all(r[7] == "paired" for r in table.values())
        assert outcome.text.splitlines()[-1].startswith("ok: 12 figures within the allowed drop")


def test_good_runs_pass_baselines_of_three_to_five(world, good_runs, tmp_path):
    extra = [write_run(tmp_path / f"x{s}", world, noisy(world, 200 + s), seed=s) for s in range(2)]
    for n_runs in (3, 5):
        path = tmp_path / f"base{n_runs}.json"
        write_baseline(good_runs[:n_runs], path, TOL)
        for run in [*good_runs[n_runs:n_runs + 2], *extra]:
            outcome = check_run(run, path, None, update=False)
            assert outcome.error is None, f"{run.name} vs {n_runs} runs: {outcome.error}"


@pytest.mark.parametrize("case", ["degraded", "swapped"])
def test_a_planted_regression_trips_naming_figure_and_rule(world, baseline_file, tmp_path, case):
    for trial in range(3):
        quality = noisy(world, 300 + trial)
        swapped = None
        if case == "degraded":  # seg_b's masks much worse on 30% of the images
            quality = degrade(world, quality, "seg_b", 0.3, 0.3, seed=trial)
        else:  # seg_b calls a cat a dog (and back) on 30% of the images
            swapped = {"seg_b": np.random.default_rng(trial).random(N_IMAGES) < 0.3}
        run = write_run(tmp_path / f"{case}{trial}", world, quality, seed=trial, swapped=swapped)
        outcome = check_run(run, baseline_file, None, update=False)
        table = rows(outcome)
        assert outcome.error, outcome.text
        for fig in FIGURES:
            row = table[("seg_b", "clean mDice" if fig == "clean_mdice" else f"{fig} mean Dice")]
            drop = float(row[2].split()[0]) - float(row[3])
            assert drop >= 0.05, row
            assert row[6:8] == ["REGRESSED", "paired"], row
        assert not [r for (m, _), r in table.items() if m != "seg_b" and r[6] == "REGRESSED"]
        assert "seg_b clean mDice" in outcome.error and "paired rule" in outcome.error
        assert outcome.error.startswith(f"{len(FIGURES)} of {len(MODELS) * len(FIGURES)} figures regressed")


def test_a_drop_made_by_a_few_images_is_not_a_regression(world, tmp_path):
    """Eight of 120 images wrong (cat for dog) move a figure past tolerance; the paired rule
    sees that the drop's interval reaches back within tolerance, the old rule does not."""
    quality = noisy(world, 400)
    path = tmp_path / "one-run.json"
    write_baseline([write_run(tmp_path / "good", world, quality)], path, TOL)
    few = np.zeros(N_IMAGES, bool)
    few[:8] = True
    run = write_run(tmp_path / "few", world, quality, swapped={"unet": few})
    outcome = check_run(run, path, None, update=False)
    assert outcome.error is None, outcome.error
    for fig in FIGURES:
        row = rows(outcome)[("unet", "clean mDice" if fig == "clean_mdice" else f"{fig} mean Dice")]
        assert float(row[2]) - float(row[3]) > TOL and row[6:8] == ["ok", "paired"], row
        ci_high_drop = -float(row[4].split("[")[1].split(",")[0])
        assert ci_high_drop > TOL > -float(row[4].split(", ")[1].rstrip("]"))  # lo < tolerance < hi
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"reduction": "seed", "models": data["models"]}))  # the old format
    old = check_run(run, path, None, update=False)
    assert old.error and "unet clean mDice" in old.error and "figure rule" in old.error


def test_the_rule_over_many_draws():
    """The rule alone (no files), 40 worlds, baselines of four runs: no good run trips a
    figure; every figure degraded by 0.065 or more trips, and nearly every one degraded by
    0.05 or more (the allowed drop is tolerance + run noise, about 0.045-0.06 here)."""
    rng = np.random.default_rng(5)
    counts = bootstrap_counts(N_IMAGES)
    false_alarms, tripped = 0, []
    for _ in range(40):
        world = make_world(int(rng.integers(1 << 30)))
        runs = [noisy(world, int(rng.integers(1 << 30))) for _ in range(5)]
        bad = degrade(world, noisy(world, int(rng.integers(1 << 30))), "unet", 0.3, 0.3, int(rng.integers(1 << 30)))
        scores = [_scores(world, q) for q in runs + [bad]]
        base = {}
        for m in MODELS:
            for fig in FIGURES:
                per_run = [s[(m, fig)] for s in scores[:4]]
                values = [figure_of_scores(x) for x in per_run]
                base[(m, fig)] = BaselineFigure(float(np.mean(values)), min(values), max(values),
                                                float(np.std(values, ddof=1)), np.mean(per_run, axis=0), True)
        for m in MODELS:
            noise = check_mod.run_noise({f: base[(m, f)] for f in FIGURES}, 4, base.values())
            for fig in FIGURES:
                b = base[(m, fig)]
                for s, is_bad in ((scores[4], False), (scores[5], m == "unet")):
                    now = figure_of_scores(s[(m, fig)])
                    got = judge(m, fig, b, now, TOL, noise, (b.per_image, s[(m, fig)], counts))
                    if is_bad:
                        tripped.append((b.mean - now, got.status == "REGRESSED"))
                    else:
                        false_alarms += got.status == "REGRESSED"
    assert false_alarms == 0
    drops, caught = np.array(tripped).T
    assert (drops >= 0.05).sum() >= 140
    assert caught[drops >= 0.065].all()
    assert caught[drops >= 0.05].mean() >= 0.95


def _scores(world: World, quality: dict) -> dict:
    """(model, figure) -> per-image per-class Dice, as a run's cells give them."""
    from petseg_bench.reporting.baseline import per_image_dice

    out = {}
    for m in MODELS:
        out[(m, "clean_mdice")] = per_image_dice(confusions(world, quality[(m, CLEAN, 0)]))
        for p in PERTS:
            out[(m, p)] = np.mean([per_image_dice(confusions(world, quality[(m, p, lv)])) for lv in LEVELS], axis=0)
    return out


# --- the baseline document ------------------------------------------------------------------------

def test_baseline_records_mean_spread_and_per_image_scores(good_runs, baseline_file):
    data = json.loads(baseline_file.read_text())
    assert data["format"] == 2 and data["n_runs"] == 4 and data["tolerance"] == TOL
    assert [r["seed"] for r in data["runs"]] == [0, 1, 2, 3]
    assert data["levels"] == {p: list(LEVELS) for p in PERTS}
    assert data["images"]["ids"] == make_world(1).ids
    figures = [read_run_figures(r).figures for r in good_runs[:4]]
    for m in MODELS:
        for fig in FIGURES:
            mean = data["models"][m][fig] if fig == "clean_mdice" else data["models"][m]["perturbations"][fig]
            spread = data["spread"][m][fig] if fig == "clean_mdice" else data["spread"][m]["perturbations"][fig]
            scores = data["per_image"][m][fig] if fig == "clean_mdice" else data["per_image"][m]["perturbations"][fig]
            values = [f[m][fig] for f in figures]
            assert spread["runs"] == pytest.approx(values, abs=1e-6)
            assert mean == pytest.approx(np.mean(values), abs=1e-6)
            assert (spread["min"], spread["max"]) == pytest.approx((min(values), max(values)), abs=1e-6)
            assert spread["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
            assert len(scores) == N_IMAGES and all(len(s) == 3 for s in scores)
            assert figure_of_scores(np.array(scores, dtype=float)) == pytest.approx(mean, abs=1e-5)
    # each image's scores on one line
    assert '[0.' in baseline_file.read_text() and len(baseline_file.read_text().splitlines()) < 2000


def test_figures_are_the_summary_figures(good_runs):
    """The gate's figures are summary.json's (baseline_values of build_summary)."""
    run = good_runs[0]
    summary = build_summary(load_run(run), json.loads((run / "run.json").read_text()), n_boot=0)
    expected = baseline_values(summary)["models"]
    got = read_run_figures(run).figures
    for m in MODELS:
        assert got[m]["clean_mdice"] == pytest.approx(expected[m]["clean_mdice"], abs=1e-6)
        for p in PERTS:
            assert got[m][p] == pytest.approx(expected[m]["perturbations"][p], abs=1e-6)


def test_runs_of_other_sweeps_do_not_make_one_baseline(world, good_runs, tmp_path):
    other = write_run(tmp_path / "other", world, noisy(world, 9), models=MODELS[:2])
    with pytest.raises(PetsegError, match="differ"):
        build_baseline([good_runs[0], other], TOL)
    unfinished = write_run(tmp_path / "unfinished", world, noisy(world, 9))
    (unfinished / "cells" / "unet" / "occlusion-L2.parquet").unlink()
    with pytest.raises(PetsegError, match="occlusion-L2.parquet"):
        build_baseline([unfinished], TOL)


def test_paired_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, (200, 3))
    base[:100, 2] = np.nan
    base[100:, 1] = np.nan
    counts = bootstrap_counts(200)
    assert paired_drop_ci(base, base, counts) == (0.0, 0.0)
    shifted = base - 0.05
    lo, hi = paired_drop_ci(base, shifted, counts)
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.05)  # the same shift on every image: no spread
    noisy_now = base - 0.05 + rng.normal(0, 0.05, base.shape)
    lo, hi = paired_drop_ci(base, noisy_now, counts)
    assert lo < 0.05 < hi and hi - lo < 0.03
    assert paired_drop_ci(base, noisy_now, bootstrap_counts(200)) == (lo, hi)


# --- (c) no vacuous pass -----------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ('{"reduction": "seed", "models": {}}', "has no models"),
    ('{"models": {"unet": {"clean_mdice": null, "perturbations": {}}}}', "unet clean mDice is None, not a number"),
    ('{"models": {"unet": {"clean_mdice": 0.8, "perturbations": {"occlusion": "0.7"}}}}', "occlusion mean Dice is '0.7'"),
    ('{"models": {"unet": {"clean_mdice": true}}}', "not a number"),
    ('{"models": {"unet": {"clean_mdice": NaN}}}', "not a number"),
    ('{"models": {"unet": {}}}', "has no figures"),
    ('{"models": {"unet": [0.8]}}', "is not"),
    ('{"models": {"unet": {"clean_mdice": 0.8, "perturbations": [0.7]}}}', "is not"),
    ('{"models": [1, 2]}', "no \"models\" object"),
    ('[]', "no \"models\" object"),
    ('{"models": {"unet": {"clean_mdice": 0.8}}', "not readable JSON"),
    ('{"format": 3, "models": {"unet": {"clean_mdice": 0.8}}}', "format 3"),
    ('{"format": 2, "models": {"unet": {"clean_mdice": 0.8}}}', "n_runs"),
    ('{"format": 2, "n_runs": 2, "spread": {"unet": {"clean_mdice": {"runs": [0.8]}}}, '
     '"models": {"unet": {"clean_mdice": 0.8}}}', "the spread of unet clean mDice"),
    ('{"format": 2, "n_runs": 1, "spread": {"unet": {"clean_mdice": {"runs": [0.8], "min": 0.8, "max": 0.8, "std": 0}}}, '
     '"images": {"ids": ["a", "b"]}, "per_image": {"unet": {"clean_mdice": [[0.8, 0.8, null]]}}, '
     '"models": {"unet": {"clean_mdice": 0.8}}}', "per_image of unet clean mDice"),
    ('{"models": {"unet": {"clean_mdice": 0.8}}, "tolerance": -1}', "tolerance"),
])
def test_a_baseline_that_would_pass_anything_is_an_error_naming_it(good_runs, tmp_path, content, message):
    path = tmp_path / "bad-baseline.json"
    path.write_text(content)
    with pytest.raises(PetsegError, match="bad-baseline.json") as err:
        check_run(good_runs[4], path, None, update=False)
    assert message in str(err.value)


def test_an_unreadable_cell_is_an_error_naming_it(good_runs, tmp_path):
    run = shutil.copytree(good_runs[4], tmp_path / "run")
    cell = run / "cells" / "seg_c" / "occlusion-L3.parquet"
    cell.write_bytes(cell.read_bytes()[:200])
    with pytest.raises(PetsegError, match=r"seg_c/occlusion-L3.parquet is unreadable"):
        check_run(run, tmp_path / "unused.json", None, update=True)


def test_a_cell_of_another_model_is_an_error_naming_it(good_runs, baseline_file, tmp_path):
    run = shutil.copytree(good_runs[4], tmp_path / "run")
    shutil.copy(run / "cells" / "seg_b" / "clean.parquet", run / "cells" / "unet" / "clean.parquet")
    with pytest.raises(PetsegError, match=r"unet/clean.parquet holds a cell of model 'seg_b', not of 'unet'"):
        check_run(run, baseline_file, None, update=False)


def test_a_cell_for_other_images_or_misnamed_is_an_error_naming_it(world, good_runs, baseline_file, tmp_path):
    run = shutil.copytree(good_runs[4], tmp_path / "run")
    cms = confusions(world, world.quality[("unet", "occlusion", 1)])
    write_cell(run, Cell("unet", "occlusion", 1), [f"other_{i}" for i in world.ids], cms, 10.0)
    with pytest.raises(PetsegError, match=r"unet/occlusion-L1.parquet holds other images"):
        check_run(run, baseline_file, None, update=False)
    shutil.copy(good_runs[4] / "cells" / "unet" / "occlusion-L1.parquet", run / "cells" / "unet" / "occlusion-L1.parquet")
    shutil.copy(run / "cells" / "unet" / "clean.parquet", run / "cells" / "unet" / "clean-copy.parquet")
    with pytest.raises(PetsegError, match=r"clean-copy.parquet is not a cell file name"):
        check_run(run, baseline_file, None, update=False)


def test_a_missing_cell_fails_naming_it(good_runs, baseline_file, tmp_path):
    run = shutil.copytree(good_runs[4], tmp_path / "run")
    (run / "cells" / "seg_c" / "gaussian_noise-L2.parquet").unlink()
    shutil.rmtree(run / "cells" / "seg_b")
    outcome = check_run(run, baseline_file, None, update=False)
    assert outcome.error
    assert "seg_c gaussian_noise mean Dice (missing from the run: " in outcome.error
    assert str(run / "cells" / "seg_c" / "gaussian_noise-L2.parquet") + " not found" in outcome.error
    assert str(run / "cells" / "seg_b" / "clean.parquet") in outcome.error
    assert rows(outcome)[("seg_c", "gaussian_noise mean Dice")][6] == "MISSING"
    assert rows(outcome)[("seg_c", "occlusion mean Dice")][6] == "ok"


def test_a_run_without_finished_cells_is_an_error(good_runs, baseline_file, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(good_runs[4] / "run.json", run / "run.json")
    with pytest.raises(PetsegError, match=rf"{run / 'cells'} holds no finished cell"):
        check_run(run, baseline_file, None, update=False)
    (run / "cells" / "unet").mkdir(parents=True)
    with pytest.raises(PetsegError, match="holds no finished cell"):
        check_run(run, baseline_file, None, update=True)


# --- (d) the old format, hand edits, other images ---------------------------------------------------

def test_the_old_single_run_format_still_loads_and_gates(good_runs, tmp_path):
    figures = read_run_figures(good_runs[0]).figures
    old = {"reduction": "seed", "tolerance": TOL,
           "models": {m: {"clean_mdice": f["clean_mdice"], "perturbations": {p: f[p] for p in PERTS}}
                      for m, f in figures.items()}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    base = load_baseline(path)
    assert base.legacy and base.n_runs == 1 and base.figures["unet"]["occlusion"].per_image is None
    same = check_run(good_runs[0], path, None, update=False)
    assert same.error is None and "old single-run format" in same.text
    assert {r[7] for r in rows(same).values()} == {"figure"}
    old["models"]["seg_c"]["perturbations"]["occlusion"] += 0.05
    path.write_text(json.dumps(old))
    failed = check_run(good_runs[0], path, None, update=False)
    assert failed.error and "seg_c occlusion mean Dice" in failed.error and "figure rule" in failed.error


def test_the_committed_quick_cpu_baseline_knows_its_spread_and_passes_its_own_run():
    # reports/quick-cpu/baseline.json: `petseg-bench baseline` over the demo at seeds 0-4;
    # the committed run is seed 0's, one of the five, so it passes against it
    committed = REPO / "reports" / "quick-cpu"
    base = load_baseline(committed / "baseline.json")
    assert not base.legacy and len(base.figures) == 6
    for figs in base.figures.values():
        assert all(f.own_spread and f.per_image is not None for f in figs.values())
    assert check_run(committed, committed / "baseline.json", None, update=False).error is None


def test_a_figure_edited_by_hand_is_judged_on_its_own(good_runs, baseline_file, tmp_path):
    data = json.loads(baseline_file.read_text())
    data["models"]["unet"]["clean_mdice"] += 0.1
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    assert load_baseline(path).figures["unet"]["clean_mdice"].per_image is None
    outcome = check_run(good_runs[5], path, None, update=False)
    row = rows(outcome)[("unet", "clean mDice")]
    assert row[6:8] == ["REGRESSED", "figure"] and "[" not in row[2]
    assert rows(outcome)[("unet", "occlusion mean Dice")][7] == "paired"


def test_other_images_fall_back_to_the_figure_rule_and_say_so(world, baseline_file, tmp_path):
    fewer = World(world.ids[:100], world.pet[:100], world.g_pet[:100], world.g_bg[:100],
                  {k: v[:100] for k, v in world.quality.items()})
    run = write_run(tmp_path / "fewer", fewer, {k: v[:100] for k, v in noisy(world, 101).items()})
    outcome = check_run(run, baseline_file, None, update=False)
    assert "the run's 100 test images are not the baseline's 120 (100 shared)" in outcome.text
    assert {r[7] for r in rows(outcome).values()} == {"figure"}


def test_masks_that_change_between_levels_leave_the_figure_without_per_image_scores(world, tmp_path):
    """Per-image scores stand for a figure only where they reproduce it (the masks are
    the same at every level); otherwise the figure is kept and judged as a whole."""
    quality = noisy(world, 500)
    run = write_run(tmp_path / "run", world, quality)
    cms = confusions(world, quality[("unet", "occlusion", 2)])
    cms[:40, :, [1, 2]] = cms[:40, :, [2, 1]]  # 40 images: the pet predicted as the other class...
    cms[:40, [1, 2], :] = cms[:40, [2, 1], :]  # ...and the ground truth swapped too: same Dice, other class
    write_cell(run, Cell("unet", "occlusion", 2), world.ids, cms, 20.0)
    assert "occlusion" not in read_run_figures(run).per_image["unet"]
    doc = build_baseline([run], TOL)
    assert "occlusion" not in doc["per_image"]["unet"]["perturbations"]
    assert "occlusion" in doc["models"]["unet"]["perturbations"]
    path = tmp_path / "b.json"
    write_baseline([run], path, TOL)
    outcome = check_run(run, path, None, update=False)
    assert outcome.error is None
    assert rows(outcome)[("unet", "occlusion mean Dice")][7] == "figure"
    assert rows(outcome)[("unet", "gaussian_noise mean Dice")][7] == "paired"


def test_update_baseline_keeps_the_tolerance_and_cli_check(good_runs, tmp_path):
    from petseg_bench.cli import main

    path = tmp_path / "b.json"
    path.write_text(json.dumps({"tolerance": 0.03, "models": {}}))
    assert check_run(good_runs[0], path, None, update=True).text.startswith("baseline written:")
    assert json.loads(path.read_text())["tolerance"] == 0.03
    result = CliRunner().invoke(main, ["check", str(good_runs[0]), "--baseline", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 run records no spread" not in result.output and "one run records no spread" in result.output


# --- provenance --------------------------------------------------------------------------------------

def test_hardware_names_the_cpu_and_the_flags_that_change_results(monkeypatch):
    from petseg_bench import provenance

    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
            "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    assert provenance.cpu_info(text) == {"model": "Intel(R) Xeon(R) Platinum 8480+",
                                         "flags": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    assert provenance.cpu_info("model name : AMD EPYC 7B13\nflags : sse avx avx2 fma\n")["flags"] == ["avx2"]
    info = provenance.hardware_info()
    assert set(info) >= {"cpu", "cpu_flags", "torch_threads", "torch_cpu_capability", "machine", "gpu"}
    line = provenance.hardware()
    assert info["cpu"] in line and f"{info['torch_threads']} torch threads" in line
    monkeypatch.setattr(provenance, "cpu_info", lambda: {"model": "Some CPU", "flags": ["avx2", "avx512_bf16"]})
    assert provenance.hardware().startswith("Some CPU (") and "avx2 avx512_bf16" in provenance.hardware()
