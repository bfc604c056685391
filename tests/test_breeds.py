"""Per-breed and per-group results (the six well-represented breeds against the rest)."""

from __future__ import annotations

import numpy as np
import pytest

from petseg_bench.data.breeds import (THIN, UNKNOWN, WELL, BreedGroups, breed_counts, breed_of,
                                      breed_scores)
from petseg_bench.data.breeds import training_breeds
from petseg_bench.engine.evaluation import group_lines
from petseg_bench.metrics import iou, mean_over_classes, reduce
from petseg_bench.specs import MetricSpec


@pytest.mark.parametrize("name, breed", [
    ("Abyssinian_100", "Abyssinian"), ("american_pit_bull_terrier_7", "american_pit_bull_terrier"),
    ("Bengal_1", "Bengal"), ("no-number", UNKNOWN), ("beagle_", UNKNOWN), ("_3", UNKNOWN),
])
def test_breed_of_reads_the_official_name(name, breed):
    assert breed_of(name) == breed


def test_breed_counts_most_first_then_by_name():
    assert list(breed_counts(["b_1", "a_1", "b_2", "c_1", "a_2"]).items()) == [("a", 2), ("b", 2), ("c", 1)]


def _cm(tp_bg: int, tp_pet: int, wrong: int, pet: int) -> np.ndarray:
    cm = np.zeros((3, 3), np.int64)
    cm[0, 0], cm[pet, pet], cm[pet, 0] = tp_bg, tp_pet, wrong
    return cm


def test_group_scores_are_the_reduction_over_their_images():
    ids = ["Bengal_1", "Bengal_2", "beagle_1", "Sphynx_1", "pug_1"]
    cms = np.stack([_cm(50, 40, 0, 1), _cm(50, 30, 10, 1), _cm(60, 20, 5, 2), _cm(40, 10, 30, 1), _cm(40, 5, 35, 2)])
    groups = BreedGroups({"Bengal": 100, "beagle": 90, "Sphynx": 3}, min_count=20)
    got = breed_scores(ids, cms, groups)
    spec = MetricSpec("iou", iou, per_class=True)
    well = mean_over_classes(reduce(spec, cms[:3], "dataset"))
    thin = mean_over_classes(reduce(spec, cms[3:], "dataset"))
    assert got["groups"][WELL]["n_images"] == 3 and got["groups"][THIN]["n_images"] == 2
    assert got["groups"][WELL]["miou"] == pytest.approx(well, abs=1e-6)
    assert got["groups"][THIN]["miou"] == pytest.approx(thin, abs=1e-6)
    assert thin < well  # the thin group's images were made worse on purpose
    # a breed the training split never saw (pug) is under-represented, like Sphynx (3 < 20)
    assert got["breeds"]["pug"]["group"] == THIN and got["breeds"]["pug"]["train_images"] == 0
    assert got["breeds"]["Sphynx"]["group"] == THIN and got["breeds"]["Bengal"]["n_images"] == 2
    assert "well represented (2 breeds, 3 images)" in group_lines(got)


def test_an_empty_group_scores_nothing():
    got = breed_scores(["Bengal_1"], np.stack([_cm(5, 5, 0, 1)]), BreedGroups({"Bengal": 50}))
    assert got["groups"][THIN] == {"n_images": 0, "miou": None, "mdice": None, "iou": None}


def test_groups_round_trip():
    g = BreedGroups({"a": 3, "b": 40}, 7)
    assert BreedGroups.from_dict(g.to_dict()) == g


def test_training_breeds_count_usable_trainval_images(make_dataset):
    root = make_dataset(n_cat=2, n_dog=3)
    groups = training_breeds(root)
    assert sum(groups.train_counts.values()) == 5 and len(groups.train_counts) == 2


@pytest.mark.realdata
def test_real_split_has_six_well_represented_breeds(real_data):
    groups = training_breeds(real_data)
    well = sorted(b for b in groups.train_counts if groups.group_of(b) == WELL)
    assert well == sorted(["Abyssinian", "Bengal", "american_bulldog", "american_pit_bull_terrier",
                           "basset_hound", "beagle"])


# --- the report's breed section, from a sweep's cells and its recorded groups --------------

BREED_IDS = ["Bengal_1", "Bengal_2", "beagle_1", "Sphynx_1"]  # the 4th image is the 3x larger one


def test_report_breaks_a_run_down_by_breed_group(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from petseg_bench.cli import main
    from petseg_bench.plugins import get_registry
    from test_report import TEST_SPECS, make_run

    for name, spec in TEST_SPECS.items():
        monkeypatch.setitem(get_registry().models, name, spec)
    groups = BreedGroups({"Bengal": 100, "beagle": 80, "Sphynx": 2})
    run_dir = make_run(tmp_path / "run", BREED_IDS, extra={"breed_groups": groups.to_dict()})
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["report", str(run_dir), "--no-examples"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    b = summary["breeds"]
    assert b["groups"][WELL] == {"n_images": 3, "breeds": ["Bengal", "beagle"]}
    assert b["groups"][THIN] == {"n_images": 1, "breeds": ["Sphynx"]}
    # unet's clean misclassifications per image are 0, 10, 20, 30 (the last on Sphynx, 3x the pixels):
    # dataset Dice is 1 - k/100 over the group's summed matrices
    assert b["models"]["unet"][WELL]["clean_mdice"] == pytest.approx(0.9, abs=1e-6)
    assert b["models"]["unet"][THIN]["clean_mdice"] == pytest.approx(0.7, abs=1e-6)
    assert b["breeds"]["Bengal"]["n_images"] == 2 and b["breeds"]["Sphynx"]["group"] == THIN
    report = (run_dir / "report.md").read_text()
    assert "Breeds: the well-represented ones against the rest" in report and "-0.280" in report  # IoU 70/130 - 270/330
    assert all(p.read_bytes() == data for p, data in before.items())  # inputs untouched


def test_a_run_without_breed_groups_has_no_breed_section(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from petseg_bench.cli import main
    from petseg_bench.plugins import get_registry
    from test_report import TEST_SPECS, make_run

    for name, spec in TEST_SPECS.items():
        monkeypatch.setitem(get_registry().models, name, spec)
    run_dir = make_run(tmp_path / "run", BREED_IDS)
    assert CliRunner().invoke(main, ["report", str(run_dir), "--no-examples"]).exit_code == 0
    assert "breeds" not in json.loads((run_dir / "summary.json").read_text())
