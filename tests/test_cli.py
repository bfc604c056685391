"""The command line: `list`, `data check`, `data prepare`, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from petseg_bench.cli import main, resolve_data_root


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def one_error_line(result) -> str:
    """The user sees exactly one line, starting 'Error:', and no traceback."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def counts_row(output: str, split: str) -> list[str]:
    """The first table row of ``split`` (the counts table comes first)."""
    for line in output.splitlines():
        if line.split()[:1] == [split]:
            return line.split()
    raise AssertionError(f"no row for {split} in:\n{output}")


# --- list -----------------------------------------------------------------------------

def test_list_shows_every_kind(runner):
    result = runner.invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    for word in ("models:", "perturbations:", "metrics:", "unet", "gaussian_noise", "salt_and_pepper",
                 "iou", "dice", "pixel_accuracy"):
        assert word in result.stdout


def test_list_pattern_filters(runner):
    result = runner.invoke(main, ["list", "gaussian*"])
    assert result.exit_code == 0, result.output
    assert "gaussian_noise" in result.stdout and "gaussian_blur" in result.stdout
    for word in ("unet", "occlusion", "metrics:", "models:"):
        assert word not in result.stdout


def test_list_no_match_is_one_error_line(runner):
    line = one_error_line(runner.invoke(main, ["list", "zzz*"]))
    assert "zzz*" in line


# --- data check -----------------------------------------------------------------------

def test_data_check_prints_counts(runner, make_dataset, tmp_path):
    root = make_dataset(n_cat=2, n_dog=3)
    result = runner.invoke(main, ["data", "check", str(root), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert str(root) in result.stdout and "official layout" in result.stdout
    # split, cats, dogs, usable, dropped, absent
    assert counts_row(result.stdout, "trainval") == ["trainval", "2", "3", "5", "0", "0"]
    assert counts_row(result.stdout, "test") == ["test", "2", "3", "5", "0", "0"]
    assert "dropped: none" in result.stdout


def test_data_check_lists_dropped_and_absent(runner, make_dataset, tmp_path):
    root = make_dataset(n_cat=2, n_dog=3)
    (root / "annotations" / "trimaps" / "beagle_1.png").unlink()
    with open(root / "annotations" / "test.txt", "a") as f:
        f.write("beagle_777 6 2 1\n")
    result = runner.invoke(main, ["data", "check", str(root), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert counts_row(result.stdout, "trainval")[3:5] == ["4", "1"]
    assert counts_row(result.stdout, "test")[5] == "1"
    assert "beagle_1.jpg" in result.stdout and "beagle_777" in result.stdout


def test_data_check_unusable_test_split_exits_1(runner, make_dataset, tmp_path):
    root = make_dataset(n_cat=1, n_dog=1, size=(20, 30))
    for name in ("Abyssinian_100", "beagle_100"):  # the test split: no foreground anywhere
        Image.fromarray(np.full((20, 30), 2, np.uint8)).save(root / "annotations" / "trimaps" / f"{name}.png")
    result = runner.invoke(main, ["data", "check", str(root), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert "no usable image in test" in result.stdout
    assert "not usable" in one_error_line(result)


def test_data_check_missing_root(runner, tmp_path):
    missing = tmp_path / "no" / "such" / "pets"
    line = one_error_line(runner.invoke(main, ["data", "check", str(missing)]))
    assert str(missing) in line


# --- data prepare ---------------------------------------------------------------------

def test_data_prepare(runner, make_dataset, tmp_path):
    root = make_dataset(layout="processed", n_cat=1, n_dog=2)
    cache = tmp_path / "cache"
    result = runner.invoke(main, ["data", "prepare", "--data-root", str(root), "--cache-dir", str(cache),
                                  "--void", "ignore", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "trainval: 3 usable, 0 dropped" in result.stdout and "test: 3 usable, 0 dropped" in result.stdout
    assert sorted(p.name.rsplit("-", 2)[0] for p in cache.iterdir()) == ["test", "trainval"]
    assert all(p.name.endswith("-ignore") for p in cache.iterdir())


def test_data_root_option_beats_env(runner, make_dataset, tmp_path):
    good, missing = make_dataset(), tmp_path / "missing-env-root"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(main, ["data", "prepare", "--data-root", str(good), *cache],
                           env={"PETSEG_DATA": str(missing)})
    assert result.exit_code == 0, result.output
    # without the option the environment is used
    line = one_error_line(runner.invoke(main, ["data", "prepare", *cache], env={"PETSEG_DATA": str(missing)}))
    assert str(missing) in line
    result = runner.invoke(main, ["data", "prepare", *cache], env={"PETSEG_DATA": str(good)})
    assert result.exit_code == 0, result.output


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PETSEG_DATA", str(tmp_path / "env"))
    assert resolve_data_root(str(tmp_path / "opt")) == tmp_path / "opt"
    assert resolve_data_root(None) == tmp_path / "env"


# --- the installed console script -----------------------------------------------------

def test_console_script_error_has_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("petseg-bench")
    if not script.is_file():
        pytest.skip(f"console script not installed at {script}")
    missing = tmp_path / "absent-root"
    env = {**os.environ, "PETSEG_DATA": str(missing)}
    proc = subprocess.run([str(script), "data", "check"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(missing) in lines[0], proc.stderr


# --- interruptions and file errors ----------------------------------------------------

def test_interrupted_line_gives_the_exact_resume_command():
    from petseg_bench.cli import interrupted_line

    line = interrupted_line(["train", "unet", "--out", "my runs", "--overwrite", "--epochs", "3"])
    assert "`petseg-bench train unet --out 'my runs' --epochs 3 --resume`" in line  # never --overwrite again
    line = interrupted_line(["run", "--out", "r", "--resume"])
    assert line.endswith("`petseg-bench run --out r --resume`")
    assert interrupted_line(["data", "prepare"]) == "interrupted"


def test_ctrl_c_exits_130_in_one_line(runner, monkeypatch, make_dataset, tmp_path):
    from petseg_bench.data import cache

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "prepare_all", interrupt)
    result = runner.invoke(main, ["data", "prepare", "--data-root", str(make_dataset()),
                                  "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert [ln for ln in result.output.splitlines() if ln.strip()] == ["interrupted"]


def test_a_file_error_no_command_named_is_still_one_line(runner, monkeypatch, make_dataset, tmp_path):
    import errno

    from petseg_bench.cli import file_error_line
    from petseg_bench.data import cache

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "cache" / "x.npy"))

    assert file_error_line(OSError(errno.EROFS, os.strerror(errno.EROFS), "/x")) == \
        "could not write /x: read-only file system"
    monkeypatch.setattr(cache, "prepare_all", full)
    result = runner.invoke(main, ["data", "prepare", "--data-root", str(make_dataset()),
                                  "--cache-dir", str(tmp_path / "cache")])
    line = one_error_line(result)
    assert line == f"Error: could not write {tmp_path / 'cache' / 'x.npy'}: no space left on device"
