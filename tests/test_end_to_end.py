"""The main job end to end on the real data: train every built-in model, sweep, report.

A much smaller version of `make demo` (one epoch, a few dozen images), so CI proves the
documented pipeline runs on real Oxford-IIIT Pet files, not only on synthetic ones.
"""

import json

import pytest
from click.testing import CliRunner
from conftest import REAL_DATA

from petseg_bench.cli import main

MODELS = ["unet", "autoencoder", "clip_only", "clip_unet", "point_clip_unet", "effnet_unet"]
SEED_PERTURBATIONS = ("gaussian_noise,gaussian_blur,contrast_increase,contrast_decrease,brightness_increase,"
                      "brightness_decrease,occlusion,salt_and_pepper")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real data not found at {REAL_DATA}"),
]


def test_train_sweep_report_check(tmp_path):
    runner = CliRunner()
    ckpts, run_dir = tmp_path / "checkpoints", tmp_path / "run"
    data = ["--data-root", str(REAL_DATA)]
    for model in MODELS:
        # autoencoder: 2 epochs so both of its phases run
        epochs = "2" if model == "autoencoder" else "1"
        res = runner.invoke(main, ["train", model, "--profile", "quick", "--epochs", epochs, "--limit", "24",
                                   "--val-limit", "8", "--in-size", "64", "--workers", "0", "--out", str(ckpts), *data])
        assert res.exit_code == 0, res.output
        assert (ckpts / model / "best.pt").is_file()

    res = runner.invoke(main, ["run", "--models", "all", "--perturbations", SEED_PERTURBATIONS, "--levels", "1,9",
                               "--checkpoints", str(ckpts), "--out", str(run_dir), "--limit", "6", *data])
    assert res.exit_code == 0, res.output
    record = json.loads((run_dir / "run.json").read_text())
    assert sorted(record["models"]) == sorted(MODELS)
    assert len(record["perturbations"]) == 8
    n_cells = len(list((run_dir / "cells").glob("*/*.parquet")))
    assert n_cells == len(MODELS) * (1 + 8 * 2)
    html = (run_dir / "index.html").read_text()
    for model in MODELS:
        assert model in html
    assert "random" in html.lower()  # the quick profile's CLIP is random-init, and says so

    baseline = tmp_path / "baseline.json"
    res = runner.invoke(main, ["check", str(run_dir), "--baseline", str(baseline), "--update-baseline"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["check", str(run_dir), "--baseline", str(baseline)])
    assert res.exit_code == 0, res.output
