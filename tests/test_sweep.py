"""The robustness sweep: per-cell files, determinism, resume, bad input, kill and resume.

A tiny synthetic dataset (8 trainval + 8 test images of 40x56 px, official layout) and
two tiny checkpoints (``unet`` and ``point_clip_unet``: 32 px input, 4 base channels,
the tiny random-init CLIP), swept on the CPU in fp32. The report is never written here
(``--no-report``): only the sweep engine and its files are under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from petseg_bench import N_CLASSES
from petseg_bench.cli import main
from petseg_bench.config import TrainConfig
from petseg_bench.data.cache import prepare
from petseg_bench.data.layout import list_split
from petseg_bench.errors import PetsegError
from petseg_bench.plugins import get_registry
from petseg_bench.engine.sweep import SweepJob, SweepPlan, parse_levels, run_sweep
from petseg_bench.perturbation import image_rng
from petseg_bench.results import CLEAN, CM_COLUMNS, RUN_FILE, Cell, load_run, read_cell, read_run, write_cell

from conftest import one_error_line, quiet, train, write_dataset

MODELS = ["unet", "point_clip_unet"]
PERTS = ["gaussian_noise", "occlusion", "salt_and_pepper"]
NOISY = ["gaussian_noise", "salt_and_pepper"]
SEED_EIGHT = ["gaussian_noise", "gaussian_blur", "contrast_increase", "contrast_decrease", "brightness_increase",
              "brightness_decrease", "occlusion", "salt_and_pepper"]  # perturbations that draw from the seeded generator
LEVELS = [1, 5, 9]
SIZE = (40, 56)  # (height, width)
N_TEST = 8
TINY = dict(in_size=32, base_channels=4, backbone="clip:petseg-tiny-vit:none")
# Ten epochs at lr 1e-2 (well under a second per model here): after one epoch the tiny
# models predict one class everywhere, whatever the input, and no seed could show.
TRAIN = TrainConfig(epochs=10, lr=1e-2, batch_size=4, workers=0, precision="fp32", device="cpu",
                    val_fraction=0.25, patience=0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=N_TEST // 2, n_dog=N_TEST // 2, size=SIZE)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, data_root, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("checkpoints")
    for name in MODELS:
        train(name, TRAIN, TINY, data_root, out, cache_dir=cache_dir, log=quiet)
    return out


@pytest.fixture(scope="module")
def sweep(ckpt_dir, data_root, cache_dir):
    """``sweep(run_dir, **plan)``: run_sweep on the tiny setup; returns the run record."""

    def run(run_dir: Path, *, seed: int = 0, batch_size: int = 3, perturbations=PERTS, levels=LEVELS,
            resume: bool = False, log=quiet) -> dict:
        plan = SweepPlan(list(MODELS), list(perturbations), list(levels), seed=seed, batch_size=batch_size)
        job = SweepJob(plan=plan, checkpoints_dir=ckpt_dir, run_dir=run_dir, data_root=data_root, resume=resume, cache_dir=cache_dir, precision="fp32",
                       device="cpu")
        return run_sweep(job, log=log)

    return run


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, sweep) -> Path:
    """The reference run: seed 0, batch size 3. Tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    sweep(run_dir)
    return run_dir


def cli_args(ckpt_dir, data_root, cache_dir, out, *extra: str, perturbations=PERTS, levels=LEVELS, seed=0) -> list[str]:
    return ["run", "--models", ",".join(MODELS), "--perturbations", ",".join(perturbations),
            "--levels", ",".join(map(str, levels)), "--checkpoints", str(ckpt_dir), "--out", str(out),
            "--data-root", str(data_root), "--cache-dir", str(cache_dir), "--seed", str(seed),
            "--batch-size", "3", "--precision", "fp32", "--device", "cpu", "--no-report", *extra]


def cells_table(run_dir: Path) -> pd.DataFrame:
    """Every per-image row of a run, in a fixed order."""
    df = load_run(run_dir)
    return df.sort_values(["model", "perturbation", "level", "image_id"]).reset_index(drop=True)


def cell_files(run_dir: Path) -> dict[str, Path]:
    return {str(p.relative_to(run_dir)): p for p in sorted((Path(run_dir) / "cells").glob("*/*.parquet"))}


def expected_cells(perturbations=PERTS, levels=LEVELS) -> list[Cell]:
    return [c for m in MODELS for c in [Cell(m, CLEAN, 0)] + [Cell(m, p, lv) for p in perturbations for lv in levels]]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


# --------------------------------------------------------------------------- cells


def test_cells_one_file_each_one_row_per_image(base_run, data_root, cache_dir):
    test = prepare(data_root, "test", "nearest", cache_dir)
    ids = list(test.names)
    assert len(ids) == N_TEST
    pixels = {name: int((test.label(i) != 255).sum()) for i, name in enumerate(test.names)}
    assert set(pixels.values()) == {SIZE[0] * SIZE[1]}  # void filled (--void nearest): every pixel counts

    expected = {f"cells/{c.model}/{'clean' if c.is_clean else f'{c.perturbation}-L{c.level}'}.parquet"
                for c in expected_cells()}
    assert set(cell_files(base_run)) == expected  # level 0 once per model, never per perturbation
    assert not list((base_run / "cells").rglob("*tmp*"))  # atomic writes leave nothing behind
    # the report's breed groups: the training split's breed counts (the synthetic data's two breeds)
    groups = read_run(base_run).breed_groups
    assert sum(groups["train_counts"].values()) == len(list_split(data_root, "trainval").samples)

    for cell in expected_cells():
        got = read_cell(base_run, cell, ids)
        assert got is not None, cell
        got_ids, cms = got
        assert got_ids == ids and cms.shape == (N_TEST, N_CLASSES, N_CLASSES) and cms.dtype == np.int64
        assert (cms >= 0).all()
        assert cms.reshape(N_TEST, -1).sum(1).tolist() == [pixels[i] for i in ids], cell

    df = load_run(base_run)
    assert len(df) == len(expected_cells()) * N_TEST
    assert list(df.filter(like="cm_").columns) == CM_COLUMNS and len(CM_COLUMNS) == 9
    assert (df[CM_COLUMNS].sum(axis=1) == SIZE[0] * SIZE[1]).all()
    clean = df[df.perturbation == CLEAN]
    assert set(clean.level) == {0} and set(clean.value) == {0.0}
    reg = get_registry()
    for p in PERTS:
        rows = df[df.perturbation == p]
        assert sorted(set(rows.level)) == LEVELS
        for lv in LEVELS:
            assert set(rows[rows.level == lv].value) == {float(reg.get("perturbation", p).levels[lv])}

    record = json.loads((base_run / RUN_FILE).read_text())
    assert record["models"] == MODELS and record["perturbations"] == PERTS and record["levels"] == LEVELS
    assert record["seed"] == 0 and record["image_ids"] == ids
    assert record["cells_computed"] == len(expected_cells())
    assert set(record["checkpoints"]) == set(MODELS)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_cells_other_seed_other_noise(base_run, sweep, tmp_path):
    reference = cells_table(base_run)
    sweep(tmp_path / "again")
    pd.testing.assert_frame_equal(cells_table(tmp_path / "again"), reference)

    sweep(tmp_path / "seed1", seed=1)
    other = cells_table(tmp_path / "seed1")
    is_clean = reference.perturbation == CLEAN
    pd.testing.assert_frame_equal(other[is_clean], reference[is_clean])  # level 0 draws nothing

    unet_clean = reference[is_clean & (reference.model == "unet")][CM_COLUMNS].to_numpy().reshape(-1, 3, 3)
    predicted = unet_clean.sum(1)  # pixels per predicted class, per image
    assert len({tuple(row) for row in predicted}) > 1, "the tiny unet predicts the same for every image: it did not learn"
    for p in NOISY:
        rows = (reference.model == "unet") & (reference.perturbation == p) & (reference.level == 9)
        assert not np.array_equal(other[rows][CM_COLUMNS].to_numpy(), reference[rows][CM_COLUMNS].to_numpy()), \
            f"{p} at level 9 gives the same confusion counts with seed 0 and seed 1"


def test_batch_size_does_not_change_cells(base_run, sweep, tmp_path):
    sweep(tmp_path / "b1", batch_size=1)
    pd.testing.assert_frame_equal(cells_table(tmp_path / "b1"), cells_table(base_run))


def test_perturbed_pixels_depend_on_image_not_on_batch():
    reg = get_registry()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(4)]
    ids = [f"img_{i}" for i in range(4)]
    for name in NOISY + ["occlusion"]:
        spec = reg.get("perturbation", name)
        value = spec.levels[9]
        whole = spec.apply(images, value, [image_rng(0, name, 9, i) for i in ids])
        one_by_one = [spec.apply([im], value, [image_rng(0, name, 9, i)])[0] for im, i in zip(images, ids)]
        reversed_ = spec.apply(images[::-1], value, [image_rng(0, name, 9, i) for i in ids[::-1]])[::-1]
        for a, b, c in zip(whole, one_by_one, reversed_):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        seed1 = spec.apply(images, value, [image_rng(1, name, 9, i) for i in ids])
        assert any(not np.array_equal(a, b) for a, b in zip(whole, seed1)), name
    # The key mixes every part: another level, perturbation or image draws differently.
    draw = lambda *key: image_rng(*key).integers(0, 2**32, 4).tolist()  # noqa: E731
    base = draw(0, "gaussian_noise", 5, "a")
    assert base == draw(0, "gaussian_noise", 5, "a")
    for other in [(1, "gaussian_noise", 5, "a"), (0, "salt_and_pepper", 5, "a"), (0, "gaussian_noise", 6, "a"),
                  (0, "gaussian_noise", 5, "b")]:
        assert draw(*other) != base, other


# --------------------------------------------------------------------------- resume


def test_resume_recomputes_only_the_missing_cell(base_run, ckpt_dir, data_root, cache_dir, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    files = cell_files(run_dir)
    victim = "cells/unet/occlusion-L5.parquet"
    before = files[victim].read_bytes()
    stamps = {k: p.stat().st_mtime_ns for k, p in files.items() if k != victim}
    files[victim].unlink()
    time.sleep(0.01)  # so a rewrite would show in the mtimes

    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, run_dir, "--resume"))
    assert result.exit_code == 0, result.output
    assert f"resume: {len(files) - 1} finished cells kept, 1 to compute" in result.output
    assert "1 cells computed" in result.output
    after = cell_files(run_dir)
    assert set(after) == set(files)
    assert {k: p.stat().st_mtime_ns for k, p in after.items() if k != victim} == stamps
    assert after[victim].read_bytes() == before
    assert json.loads((run_dir / RUN_FILE).read_text())["cells_computed"] == 1
    pd.testing.assert_frame_equal(cells_table(run_dir), cells_table(base_run))

    # A finished run resumed again computes nothing and changes nothing.
    stamps = {k: p.stat().st_mtime_ns for k, p in after.items()}
    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, run_dir, "--resume"))
    assert result.exit_code == 0, result.output
    assert "0 cells computed" in result.output
    assert {k: p.stat().st_mtime_ns for k, p in cell_files(run_dir).items()} == stamps


def test_truncated_or_foreign_cell_is_recomputed_never_merged(base_run, sweep, data_root, cache_dir, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    ids = list(prepare(data_root, "test", "nearest", cache_dir).names)
    truncated = Cell("point_clip_unet", "salt_and_pepper", 9)
    raw = truncated.path(run_dir).read_bytes()
    truncated.path(run_dir).write_bytes(raw[: len(raw) // 2])
    assert read_cell(run_dir, truncated, ids) is None

    # A leftover for other images (as a run on another subset would leave) is no finished cell either.
    foreign = Cell("unet", "gaussian_noise", 1)
    _, cms = read_cell(run_dir, foreign, ids)
    write_cell(run_dir, foreign, ids[:3], cms[:3], 2.0)
    assert read_cell(run_dir, foreign) is not None and read_cell(run_dir, foreign, ids) is None
    # A file whose metadata names another cell (copied over by hand) is not this cell.
    renamed = Cell("unet", "occlusion", 9)
    shutil.copyfile(Cell("unet", "occlusion", 1).path(run_dir), renamed.path(run_dir))
    assert read_cell(run_dir, renamed, ids) is None
    # A killed write's temporary file is ignored.
    (run_dir / "cells" / "unet" / ".gaussian_noise-L5.parquet.tmp-12345").write_bytes(raw[:100])

    messages = []
    record = sweep(run_dir, resume=True, log=messages.append)
    assert record.cells_computed == 3
    assert any("3 to compute" in m for m in messages), messages
    for cell in (truncated, foreign, renamed):
        assert read_cell(run_dir, cell, ids) is not None
    merged = cells_table(run_dir)
    assert not merged.duplicated(["model", "perturbation", "level", "image_id"]).any()
    pd.testing.assert_frame_equal(merged, cells_table(base_run))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change,needles", [
    (dict(perturbations=["gaussian_noise", "no_such_perturbation"]), ["no_such_perturbation", "occlusion"]),
    (dict(levels=["12"]), ["12", "0..9"]),
    (dict(levels=["x"]), ["'x'", "--levels"]),
    (dict(levels=["1-x"]), ["'1-x'"]),
    (dict(models=["unet", "clip_unet"]), ["clip_unet", "petseg-bench train clip_unet", "--train-missing"]),
])
def test_cli_rejects_bad_input_in_one_line(change, needles, ckpt_dir, data_root, cache_dir, tmp_path):
    out = tmp_path / "run"
    args = cli_args(ckpt_dir, data_root, cache_dir, out, perturbations=change.get("perturbations", PERTS),
                    levels=change.get("levels", LEVELS))
    if "models" in change:
        args[args.index("--models") + 1] = ",".join(change["models"])
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    line = one_error_line(result.output)
    for needle in needles:
        assert needle in line, line
    if "models" in change:
        assert "train unet" not in line  # only the missing model is listed
    assert not out.exists()


def test_cli_refuses_existing_run_without_resume_and_other_configuration(base_run, ckpt_dir, data_root, cache_dir,
                                                                         tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    record = (run_dir / RUN_FILE).read_bytes()
    stamps = {k: p.stat().st_mtime_ns for k, p in cell_files(run_dir).items()}

    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, run_dir))
    assert result.exit_code != 0
    line = one_error_line(result.output)
    assert str(run_dir) in line and "--resume" in line

    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, run_dir, "--resume", seed=1))
    assert result.exit_code != 0
    line = one_error_line(result.output)
    assert "another configuration" in line and "seed: 0 -> 1" in line

    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, run_dir, "--resume",
                                               perturbations=["gaussian_noise", "occlusion"]))
    assert result.exit_code != 0
    line = one_error_line(result.output)
    assert "another configuration" in line and "perturbations" in line and "salt_and_pepper" in line

    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, run_dir, "--resume", levels=[1, 5]))
    assert result.exit_code != 0
    assert "levels" in one_error_line(result.output)

    # Refusals touch nothing.
    assert (run_dir / RUN_FILE).read_bytes() == record
    assert {k: p.stat().st_mtime_ns for k, p in cell_files(run_dir).items()} == stamps


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_run_resumes_to_the_same_cells(ckpt_dir, data_root, cache_dir, sweep, tmp_path):
    """SIGKILL a sweep in a subprocess once it has written a few cells, finish it with --resume:
    the cells equal an uninterrupted run's. Every level of every perturbation, batch size 1,
    so the run is long enough to be caught half-way."""
    reg = get_registry()
    # The seed's eight and one click perturbation (computed for the point model only):
    # long enough to be caught half-way at batch size 1, short enough for CI.
    perts = sorted(SEED_EIGHT + ["click_jitter"])
    levels = list(range(1, 10))
    cells = [c for c in expected_cells(perts, levels)
             if c.is_clean or reg.get("perturbation", c.perturbation).target != "clicks" or c.model == "point_clip_unet"]
    n_total = len(cells)
    out = tmp_path / "killed"
    args = cli_args(ckpt_dir, data_root, cache_dir, out, perturbations=perts, levels=levels)
    args[args.index("--batch-size") + 1] = "1"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "petseg_bench.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while len(cell_files(out)) < 4:  # both clean cells and at least one perturbed group
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended (rc {proc.returncode}) before it could be killed: "
                            f"{proc.stdout.read().decode(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("fewer than 4 cell files within 180 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    n_before = len(cell_files(out))
    assert 4 <= n_before < n_total, f"{n_before} of {n_total} cells: the run was not caught half-way"

    # Without --resume the leftover run is refused; with it, only the missing cells run.
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "--resume" in one_error_line(result.output)
    result = CliRunner().invoke(main, args + ["--resume"])
    assert result.exit_code == 0, result.output
    n_kept = len([c for c in cells if read_cell(out, c) is not None])
    assert n_kept == n_total
    assert f"resume: {n_before} finished cells kept, {n_total - n_before} to compute" in result.output
    assert f"{n_total - n_before} cells computed" in result.output

    sweep(tmp_path / "whole", perturbations=perts, levels=levels, batch_size=4)
    whole = cells_table(tmp_path / "whole")
    assert len(whole) == n_total * N_TEST
    pd.testing.assert_frame_equal(cells_table(out), whole)


# --------------------------------------------------------------------------- levels


def test_levels_zero_runs_only_the_clean_cells(ckpt_dir, data_root, cache_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, out, levels=[0]))
    assert result.exit_code == 0, result.output
    assert "0 levels" in result.output and f"{len(MODELS)} cells computed" in result.output
    assert set(cell_files(out)) == {f"cells/{m}/clean.parquet" for m in MODELS}


def test_parse_levels():
    assert parse_levels("all") == list(range(1, 10))
    assert parse_levels(None) == list(range(1, 10))
    assert parse_levels("1-9") == list(range(1, 10))
    assert parse_levels("1-3,7") == [1, 2, 3, 7]
    assert parse_levels("7, 1-3, 3") == [1, 2, 3, 7]
    assert parse_levels("0") == []  # level 0 always runs, once per model
    assert parse_levels("0-2") == [1, 2]
    for bad, needle in (("10", "10"), ("12", "12"), ("-1", "-1"), ("3-12", "10"), ("x", "'x'"), ("1,,2", "''"), ("3-1", "'3-1'")):
        with pytest.raises(PetsegError, match=needle) as info:
            parse_levels(bad)
        assert "\n" not in str(info.value)
