"""One validator for a run folder: damaged cells, malformed run.json and partial runs.

Each case damages a copy of a small, whole synthetic run (two models, two perturbations,
levels 1-2, four images) and runs ``report``, ``check`` and ``baseline`` on it: each must
exit non-zero with one ``Error:`` line naming the file, never a traceback, within a few
seconds, and leave every file of the folder byte for byte as it was. The last tests run
the real sweep (tiny models of tests/test_sweep.py): ``run --resume`` recomputes a
damaged cell and ends with the uninterrupted run's cells.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from petseg_bench.cli import main
from petseg_bench.engine.merge import merged_record
from petseg_bench.engine.shard import Shard, all_groups
from petseg_bench.reporting.check import write_baseline
from petseg_bench.results import CLEAN, RUN_FILE, Cell, RunRecord, write_cell

MODELS = ["unet", "point_clip_unet"]
PERTS = {"gaussian_noise": ("std", [0, 4, 8]), "occlusion": ("fraction", [0.0, 0.1, 0.2])}
LEVELS = [1, 2]
IDS = ["img_a", "img_b", "img_c", "img_d"]
#: A command on a damaged folder answers within this (the issue: "a few seconds").
SECONDS = 5.0


def cms_of(k: int, n: int = len(IDS)) -> np.ndarray:
    """Every class 100 ground-truth pixels, k of them predicted as the next class."""
    m = np.zeros((3, 3), np.int64)
    for t in range(3):
        m[t, t], m[t, (t + 1) % 3] = 100 - k, k
    return np.stack([m * (1 + i % 2) for i in range(n)])


def all_cells() -> list[Cell]:
    return [c for m in MODELS for c in [Cell(m, CLEAN, 0)] + [Cell(m, p, lv) for p in PERTS for lv in LEVELS]]


def value_of(cell: Cell) -> float:
    return 0.0 if cell.is_clean else float(PERTS[cell.perturbation][1][cell.level])


def record(**extra) -> dict:
    return {"models": list(MODELS), "perturbations": list(PERTS), "levels": list(LEVELS), "seed": 0, "limit": None,
            "void": "nearest", "image_ids": list(IDS), "data_fingerprint": "f00d",
            "checkpoints": {m: "abcd" for m in MODELS},
            "perturbation_params": {p: {"param": n, "values": v} for p, (n, v) in PERTS.items()},
            "runtime": "cpu (test), fp32", "hardware": "test machine", "started": "2026-01-01T00:00:00+00:00",
            "model_info": {m: {"checkpoint": f"ck/{m}/best.pt", "sha256": "abcd", "backbone": None,
                               "eval_click_rule": None, "in_size": 32, "base_channels": 4} for m in MODELS},
            "click_perturbations": [], "cells_computed": 10, "image_levels_per_s": 10.0, "wall_seconds": 3.0,
            **extra}


def make_run(run_dir: Path, cells=None, rec: dict | None = None) -> Path:
    for k, cell in enumerate(all_cells() if cells is None else cells):
        write_cell(run_dir, cell, IDS, cms_of(k % 7), value_of(cell))
    if rec is not False:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / RUN_FILE).write_text(json.dumps(rec or record(), indent=2))
    return Path(run_dir)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("good") / "run")


@pytest.fixture(scope="module")
def baseline_file(good_run, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    write_baseline([good_run], path, 0.02)
    return path


def folder_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def invoke(args: list[str]):
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, args)
    return result, time.perf_counter() - t0


def assert_refused(result, seconds: float, needle: str) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert needle in lines[0], lines[0]
    assert seconds < SECONDS, seconds
    return lines[0]


# --- the damage, each a function of the run folder; returns what the error names --------------

def rewrite(path: Path, drop: str | None = None, meta=None, **columns) -> None:
    table = pq.read_table(path)
    if drop:
        table = table.drop_columns([drop])
    for name, values in columns.items():
        table = table.set_column(table.column_names.index(name), name, pa.array(values))
    if meta is not None:
        table = table.replace_schema_metadata({"petseg_bench": json.dumps(meta)})
    pq.write_table(table, path)


def cell_path(run: Path, model: str, name: str) -> Path:
    return run / "cells" / model / f"{name}.parquet"


def missing_cell(run):
    cell_path(run, "unet", "gaussian_noise-L2").unlink()
    return "unet/gaussian_noise-L2.parquet"


def other_models_rows(run):
    shutil.copy(cell_path(run, "point_clip_unet", "clean"), cell_path(run, "unet", "clean"))
    return "unet/clean.parquet"


def extra_models_cell(run):
    write_cell(run, Cell("clip_unet", CLEAN, 0), IDS, cms_of(1), 0.0)
    return "clip_unet/clean.parquet"


def fewer_rows(run):
    write_cell(run, Cell("unet", "occlusion", 1), IDS[:3], cms_of(2, 3), 0.1)
    return "unet/occlusion-L1.parquet"


def duplicate_ids(run):
    write_cell(run, Cell("unet", "occlusion", 1), [IDS[0], *IDS[:3]], cms_of(2), 0.1)
    return "unet/occlusion-L1.parquet"


def negative_counts(run):
    cms = cms_of(2)
    cms[1, 0, 1] = -3
    write_cell(run, Cell("unet", "occlusion", 2), IDS, cms, 0.2)
    return "unet/occlusion-L2.parquet"


def level_not_its_name(run):
    shutil.copy(cell_path(run, "unet", "occlusion-L1"), cell_path(run, "unet", "occlusion-L2"))
    return "unet/occlusion-L2.parquet"


def missing_column(run):
    rewrite(cell_path(run, "point_clip_unet", "gaussian_noise-L1"), drop="cm_1_2")
    return "point_clip_unet/gaussian_noise-L1.parquet"


def level_the_run_never_had(run):
    write_cell(run, Cell("unet", "occlusion", 7), IDS, cms_of(2), 0.2)
    return "unet/occlusion-L7.parquet"


def changed_pixel_count(run):
    cms = cms_of(4)
    cms[2, 1, 1] += 9  # one image now has 9 scored pixels more than in every other cell
    write_cell(run, Cell("point_clip_unet", "occlusion", 1), IDS, cms, 0.1)
    return "point_clip_unet/occlusion-L1.parquet"


def wrong_level_value(run):
    write_cell(run, Cell("unet", "gaussian_noise", 1), IDS, cms_of(1), 99.0)
    return "unet/gaussian_noise-L1.parquet"


DAMAGED_CELLS = [missing_cell, other_models_rows, extra_models_cell, fewer_rows, duplicate_ids, negative_counts,
                 level_not_its_name, missing_column, level_the_run_never_had, changed_pixel_count, wrong_level_value]


def edit_record(fn):
    def damage(run):
        rec = json.loads((run / RUN_FILE).read_text())
        fn(rec)
        (run / RUN_FILE).write_text(json.dumps(rec))
        return RUN_FILE
    damage.__name__ = fn.__name__
    return damage


def set_key(key, value):
    return lambda rec: rec.__setitem__(key, value)


def cell_metadata_lacks_model(run):
    path = cell_path(run, "unet", "occlusion-L1")
    meta = json.loads(pq.read_table(path).schema.metadata[b"petseg_bench"])
    del meta["model"]
    rewrite(path, meta=meta)
    return "cells/unet/occlusion-L1.parquet"


def not_json(run):
    (run / RUN_FILE).write_text('{"models": ["unet"')
    return RUN_FILE


MALFORMED_RECORDS = [
    edit_record(lambda r: r.update(wall_seconds=math.nan)),
    edit_record(lambda r: r["perturbation_params"]["occlusion"].update(values=[0.0, math.inf, 0.2])),
    edit_record(lambda r: r.pop("image_ids")),
    edit_record(set_key("image_ids", "img_a,img_b")),
    edit_record(set_key("image_ids", [1, 2, 3, 4])),
    edit_record(set_key("image_ids", ["img_a", "img_a", "img_c", "img_d"])),
    edit_record(set_key("models", "unet,point_clip_unet")),
    edit_record(set_key("levels", ["1", "2"])),
    edit_record(set_key("perturbation_params", {"occlusion": [0, 0.1]})),
    edit_record(set_key("model_info", ["unet"])),
    edit_record(lambda r: r["model_info"]["unet"].update(in_size="big")),
    edit_record(set_key("seed", None)),
    not_json,
    cell_metadata_lacks_model,
]


@pytest.mark.parametrize("damage", DAMAGED_CELLS, ids=lambda f: f.__name__)
def test_damaged_cells_are_refused_naming_the_file(damage, good_run, baseline_file, tmp_path):
    run = shutil.copytree(good_run, tmp_path / "run")
    needle = damage(run)
    before = folder_hash(run)
    for args in (["report", str(run), "--no-examples"], ["check", str(run), "--baseline", str(baseline_file)],
                 ["baseline", str(run), "--out", str(tmp_path / "b.json")]):
        result, seconds = invoke(args)
        if args[0] == "check" and damage is missing_cell:  # the comparison table, then the one line
            assert result.exit_code == 1 and "MISSING" in result.stdout and needle in result.stderr
            continue
        assert_refused(result, seconds, needle)
        assert folder_hash(run) == before, args
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("damage", MALFORMED_RECORDS, ids=lambda f: f.__name__)
def test_malformed_run_records_are_refused_naming_the_file(damage, good_run, baseline_file, tmp_path):
    run = shutil.copytree(good_run, tmp_path / "run")
    needle = damage(run)
    before = folder_hash(run)
    for args in (["report", str(run), "--no-examples"], ["check", str(run), "--baseline", str(baseline_file)],
                 ["baseline", str(run), "--out", str(tmp_path / "b.json")]):
        result, seconds = invoke(args)
        assert_refused(result, seconds, str(run / needle))
        assert folder_hash(run) == before, args


def test_the_whole_run_passes_and_its_report_is_whole(good_run, baseline_file, tmp_path):
    run = shutil.copytree(good_run, tmp_path / "run")
    result, _ = invoke(["report", str(run), "--no-examples"])
    assert result.exit_code == 0, result.output
    assert "missing_cells" not in json.loads((run / "summary.json").read_text())
    assert "Partial run" not in (run / "report.md").read_text()
    assert invoke(["check", str(run), "--baseline", str(baseline_file)])[0].exit_code == 0


# --- partial and sharded runs -------------------------------------------------------------------

def shard_cells(index: int, count: int) -> list[Cell]:
    owned = Shard(index, count).owned(all_groups(list(PERTS), {p: LEVELS for p in PERTS}))
    return [c for c in all_cells() if (c.perturbation, c.level) in owned]


def shard_record(index: int, count: int, **extra) -> dict:
    return record(shard={"index": index, "count": count}, **extra)


def make_shard(run: Path, index: int, count: int, rec: dict | None = None) -> Path:
    make_run(run, shard_cells(index, count), rec=False)
    folder = run / "shards" / f"{index}-of-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps(rec or shard_record(index, count)))
    return run


def whole_model_missing(tmp_path):
    run = make_run(tmp_path / "run")
    shutil.rmtree(run / "cells" / "point_clip_unet")
    return run, [str(run)], "point_clip_unet/clean.parquet"


def one_cell_missing(tmp_path):
    run = make_run(tmp_path / "run")
    cell_path(run, "point_clip_unet", "occlusion-L2").unlink()
    return run, [str(run)], "point_clip_unet/occlusion-L2.parquet"


def shared_folder_shard_missing(tmp_path):
    run = make_shard(tmp_path / "run", 0, 3)
    make_shard(run, 2, 3)
    return run, [str(run)], "shard 1/3 missing"


def own_folders_shard_missing(tmp_path):
    a, b = make_shard(tmp_path / "a", 0, 3), make_shard(tmp_path / "b", 1, 3)
    return tmp_path, [str(a), str(b), "--out", str(tmp_path / "merged")], "shard 2/3 missing"


def shard_record_with_nan(tmp_path):
    run = make_shard(tmp_path / "run", 0, 2, shard_record(0, 2, image_levels_per_s=math.nan))
    make_shard(run, 1, 2)
    return run, [str(run)], "shards/0-of-2/run.json"


def shard_of_another_seed(tmp_path):
    run = make_shard(tmp_path / "run", 0, 2)
    make_shard(run, 1, 2, {**shard_record(1, 2), "seed": 5})
    return run, [str(run)], "seed: 0 -> 5"


def shard_with_a_damaged_cell(tmp_path):
    run = make_shard(tmp_path / "run", 0, 2)
    make_shard(run, 1, 2)
    write_cell(run, Cell("unet", CLEAN, 0), IDS[::-1], cms_of(0), 0.0)
    return run, [str(run)], "unet/clean.parquet"


PARTIAL = [whole_model_missing, one_cell_missing, shared_folder_shard_missing, own_folders_shard_missing,
           shard_record_with_nan, shard_of_another_seed, shard_with_a_damaged_cell]


@pytest.mark.parametrize("make", PARTIAL, ids=lambda f: f.__name__)
def test_partial_and_sharded_runs_are_refused(make, tmp_path):
    folder, args, needle = make(tmp_path)
    before = folder_hash(folder)
    result, seconds = invoke(["report", *args, "--no-examples"])
    line = assert_refused(result, seconds, needle)
    assert "--allow-partial" in line or make in (shard_record_with_nan, shard_of_another_seed,
                                                 shard_with_a_damaged_cell)
    assert folder_hash(folder) == before
    assert not (tmp_path / "merged" / RUN_FILE).exists()


@pytest.mark.parametrize("make", [one_cell_missing, shared_folder_shard_missing, own_folders_shard_missing],
                         ids=lambda f: f.__name__)
def test_allow_partial_reports_what_is_missing_first(make, tmp_path):
    folder, args, _ = make(tmp_path)
    result, _ = invoke(["report", *args, "--no-examples", "--allow-partial"])
    assert result.exit_code == 0, result.output
    out = Path(args[-1]) if "--out" in args else Path(args[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_cells"]
    for doc in ("report.md", "index.html"):
        text = (out / doc).read_text()
        first = text.index("Partial run: missing cells")
        assert first < text.index("What was run"), doc
        assert all(p in text for p in summary["missing_cells"]), doc
    if make is not one_cell_missing:
        assert json.loads((out / RUN_FILE).read_text())["missing_shards"]
        assert "Shard" in (out / "report.md").read_text()


def test_merged_wall_time_is_the_span_and_each_shard_keeps_its_own():
    a = shard_record(0, 2, started="2026-01-01T00:00:00+00:00", finished="2026-01-01T00:01:40+00:00",
                     wall_seconds=100.0)
    b = shard_record(1, 2, started="2026-01-01T00:00:30+00:00", finished="2026-01-01T00:02:00+00:00",
                     wall_seconds=90.0)
    merged = merged_record({"a/run.json": RunRecord.from_json(a), "b/run.json": RunRecord.from_json(b)})
    assert merged.wall_seconds == 120.0  # from the first start to the last end, not 190
    assert [m["wall_seconds"] for m in merged.merged_from] == [100.0, 90.0]
    assert merged.finished == "2026-01-01T00:02:00+00:00"
    old = {k: v for k, v in a.items() if k != "finished"}  # a record without "finished": start + wall time
    assert merged_record({"a": RunRecord.from_json(old), "b": RunRecord.from_json(b)}).wall_seconds == 120.0


@pytest.mark.parametrize("args", [["report", "RUN", "--out", "bad\nname"], ["report", "RUN\tX"],
                                  ["run", "--out", "runs/x\ny", "--models", "unet"],
                                  ["run", "--out", "runs/\x1b[31mred", "--models", "unet"]])
def test_a_path_with_a_control_character_is_refused(args, good_run, tmp_path):
    args = [str(good_run) if a == "RUN" else a.replace("RUN", str(good_run)) for a in args]
    before = folder_hash(good_run)
    result, seconds = invoke(args)
    assert_refused(result, seconds, "control character")
    assert folder_hash(good_run) == before


# --- run --resume recomputes damaged cells ------------------------------------------------------

from test_sweep import base_run, cache_dir, ckpt_dir, cli_args, data_root, sweep  # noqa: E402,F401 - fixtures


def _negative(run: Path) -> None:
    cell = Cell("unet", "occlusion", 5)
    table = pq.read_table(cell.path(run))
    cms = np.stack([table.column(c).to_numpy() for c in [f"cm_{t}_{p}" for t in range(3) for p in range(3)]], 1)
    cms[0, 0] = -1
    meta = json.loads(table.schema.metadata[b"petseg_bench"])
    write_cell(run, cell, table.column("image_id").to_pylist(), cms, meta["value"])


def _drop_column(run: Path) -> None:
    rewrite(Cell("point_clip_unet", "gaussian_noise", 9).path(run), drop="has_dog")


def _pixel_count(run: Path) -> None:
    cell = Cell("unet", CLEAN, 0)
    table = pq.read_table(cell.path(run))
    rewrite(cell.path(run), cm_1_1=np.asarray(table.column("cm_1_1").to_numpy()) + 1)


@pytest.mark.parametrize("damage", [_negative, _drop_column, _pixel_count], ids=lambda f: f.__name__)
def test_resume_recomputes_a_damaged_cell_to_the_uninterrupted_runs_bytes(damage, base_run, ckpt_dir, data_root,
                                                                           cache_dir, tmp_path):
    run = shutil.copytree(base_run, tmp_path / "run")
    damage(run)
    result = CliRunner().invoke(main, cli_args(ckpt_dir, data_root, cache_dir, run, "--resume"))
    assert result.exit_code == 0, result.output
    assert "1 cells computed" in result.output
    cells = lambda d: {k: v for k, v in folder_hash(d).items() if k.startswith("cells")}  # noqa: E731
    assert cells(run) == cells(base_run)
