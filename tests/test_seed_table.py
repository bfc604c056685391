"""The reference's table over training seeds (mean, spread, per-image CI, breed groups)."""

from __future__ import annotations

import json

import pytest

from petseg_bench.data.breeds import THIN, WELL
from petseg_bench.errors import PetsegError
from petseg_bench.reporting.seeds import collect, main, seed_table


def _write(folder, seed, model, miou, thin=None, void="ignore"):
    d = folder / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    data = {"metrics": {"dataset": {"iou": {"mean": miou, "ci95": [miou - 0.01, miou + 0.01],
                                            "per_class": {"background": 0.9, "cat": miou, "dog": 0.5}}}},
            "breeds": {"groups": {WELL: {"miou": miou}, THIN: {"miou": thin}}}}
    (d / f"{model}.{void}.json").write_text(json.dumps(data))


def test_mean_and_spread_over_seeds(tmp_path):
    for seed, v in enumerate((0.90, 0.92, 0.94)):
        _write(tmp_path, seed, "m", v, thin=v - 0.1)
    _write(tmp_path, 0, "other", 0.5)
    _write(tmp_path, 0, "m", 0.1, void="nearest")  # the other void mode is not mixed in
    scores = collect(tmp_path, "ignore")
    assert sorted(scores) == ["m", "other"] and len(scores["m"]) == 3
    table = seed_table(scores)
    assert "0.920 ± 0.020 (0.900-0.940)" in table
    assert "[0.890, 0.910]" in table  # seed 0's per-image CI
    assert "-0.100" in table  # the gap between the breed groups
    assert "0.500 (1 seed)" in table


def test_no_evaluations_is_one_line(tmp_path, capsys):
    with pytest.raises(PetsegError, match="no .*seed<S>"):
        collect(tmp_path, "ignore")
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "m.ignore.json").write_text("{}")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "m.ignore.json is not an `evaluate` result" in err
