"""`make reference` end to end, small: two training seeds of one model, every stage."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_reference_runs_every_stage(make_dataset, tmp_path):
    if not (ROOT / ".venv" / "bin" / "petseg-bench").exists():
        pytest.skip("make reference runs in the project's .venv (made by `make test`)")
    data = make_dataset(n_cat=4, n_dog=4, size=(40, 48))
    out = tmp_path / "ref"
    env = {**os.environ, "PETSEG_DATA": str(data), "PETSEG_CACHE": str(tmp_path / "cache")}
    cmd = ["make", "-s", "-C", str(ROOT), "-o", ".venv/bin/.installed", "reference", f"REF_OUT={out}",
           "REF_PROFILE=quick", "REF_MODELS=unet", "REF_SEEDS=0 1", "REF_IMAGES=6",
           "REF_TRAIN_ARGS=--epochs 1 --base-channels 4 --in-size 32 --batch-size 4 --device cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for seed in (0, 1):
        assert (out / f"seed{seed}" / "checkpoints" / "unet" / "best.pt").is_file()
        assert (out / f"seed{seed}" / "run.json").is_file()
        for void in ("nearest", "ignore"):
            result = json.loads((out / "clean" / f"seed{seed}" / f"unet.{void}.json").read_text())
            assert result["void"] == void and "breeds" in result
    assert (out / "seed0" / "report.md").is_file()
    assert json.loads((out / "baseline.json").read_text())
    assert "0,1" in (out / "seeds.md").read_text()
    stages = [ln.split("\t")[0] for ln in (out / "stages.tsv").read_text().splitlines() if not ln.startswith("#")]
    assert stages[:2] == ["train unet seed 0", "train unet seed 1"]
    assert {"sweep seed 0", "sweep seed 1", "report", "baseline"} <= set(stages)
    assert "stage times" in done.stdout
