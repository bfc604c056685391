"""``run --shard I/N`` and ``report`` over shards: a deterministic split whose union is the
full run cell for cell, shards in one folder each or in one shared folder (at once),
and the refusals: bad specs, shards of another configuration or split, the same shard
twice, a report while shards still write.

The tiny set-up of ``test_sweep`` (its fixtures): two tiny checkpoints, 8 synthetic test
images, 3 perturbations x levels 1, 5, 9 (10 groups with the clean one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from petseg_bench.cli import main
from petseg_bench.engine.lock import folder_lock
from petseg_bench.engine.shard import Shard, all_groups, parse_shard
from petseg_bench.errors import PetsegError
from petseg_bench.results import RUN_FILE, read_run, shard_dir

from conftest import one_error_line
from test_sweep import (LEVELS, PERTS, base_run, cache_dir, cells_table, cell_files, ckpt_dir, cli_args,  # noqa: F401
                        data_root, sweep)


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def shard_args(ckpt_dir, data_root, cache_dir, out, shard: str, *extra: str, seed: int = 0) -> list[str]:
    return cli_args(ckpt_dir, data_root, cache_dir, out, "--shard", shard, *extra, seed=seed)


# --------------------------------------------------------------------------- the split


def test_parse_shard_and_its_one_line_errors():
    assert parse_shard(None) is None
    assert parse_shard("0/1") == Shard(0, 1) and parse_shard(" 3 / 4 ") == Shard(3, 4)
    for bad, needle in (("3/2", "0..1"), ("2/2", "0..1"), ("0/0", "at least 1"), ("a/b", "not I/N"),
                        ("-1/2", "0..1"), ("1", "not I/N"), ("1/2/3", "not I/N"), ("", "not I/N")):
        with pytest.raises(PetsegError, match=needle) as info:
            parse_shard(bad)
        assert str(info.value).startswith("--shard") and "\n" not in str(info.value)


@pytest.mark.parametrize("spec,needle", [("3/2", "within 0..1"), ("0/0", "at least 1"), ("a/b", "not I/N")])
def test_cli_bad_shard_is_one_line(spec, needle, tmp_path):
    result = invoke(shard_args(tmp_path / "ckpt", tmp_path / "data", tmp_path / "cache", tmp_path / "run", spec))
    assert result.exit_code != 0
    line = one_error_line(result.output)
    assert "--shard" in line and needle in line
    assert not (tmp_path / "run").exists()


def test_shards_do_not_train_missing_models(tmp_path):
    args = shard_args(tmp_path / "ckpt", tmp_path / "data", tmp_path / "cache", tmp_path / "run", "0/2", "--train-missing")
    line = one_error_line(invoke(args).output)
    assert "--train-missing cannot be combined with --shard" in line and not (tmp_path / "run").exists()


def test_groups_split_into_disjoint_balanced_shards_whatever_the_order():
    levels = {"b": [1, 5, 9], "a": [2, 1], "c": []}
    groups = all_groups(["b", "a", "c"], levels)
    assert groups == all_groups(["c", "a", "b"], levels)  # the order of --perturbations does not matter
    assert groups[0] == ("clean", 0) and len(groups) == 6
    for n in range(1, 8):
        parts = [Shard(i, n).owned(groups) for i in range(n)]
        assert set().union(*parts) == set(groups) and sum(len(p) for p in parts) == len(groups)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


# --------------------------------------------------------------------------- one folder per shard


def test_shards_in_their_own_folders_merge_into_the_full_run(base_run, ckpt_dir, data_root, cache_dir, tmp_path):
    folders = [tmp_path / f"shard{i}" for i in range(3)]
    for i, out in enumerate(folders):
        result = invoke(shard_args(ckpt_dir, data_root, cache_dir, out, f"{i}/3"))
        assert result.exit_code == 0, result.output
        assert f"sweep shard {i}/3" in result.output and f"report {out}" in result.output
        record = json.loads((shard_dir(out, i, 3) / RUN_FILE).read_text())
        assert record["shard"] == {"index": i, "count": 3}
        assert not (out / RUN_FILE).exists() and not (out / "index.html").exists()  # a shard writes no report
    files = [set(cell_files(f)) for f in folders]
    assert not (files[0] & files[1]) and not (files[1] & files[2]) and not (files[0] & files[2])
    assert set().union(*files) == set(cell_files(base_run))

    # The same shard again needs --resume, and then has nothing left to do.
    again = invoke(shard_args(ckpt_dir, data_root, cache_dir, folders[1], "1/3"))
    assert "shard 1/3" in one_error_line(again.output) and "--resume" in one_error_line(again.output)
    again = invoke(shard_args(ckpt_dir, data_root, cache_dir, folders[1], "1/3", "--resume"))
    assert again.exit_code == 0 and "0 cells computed" in again.output

    # The three folders merge into one run; one folder alone reports what it has and names what is missing.
    merged = tmp_path / "merged"
    result = invoke(["report", *map(str, folders), "--out", str(merged), "--no-examples"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(cells_table(merged), cells_table(base_run))
    record = json.loads((merged / RUN_FILE).read_text())
    assert [m["shard"]["index"] for m in record["merged_from"]] == [0, 1, 2] and "shard" not in record
    assert record["cells_computed"] == len(cell_files(base_run)) - len(files[1])  # shard 1's last session: none
    assert (merged / "index.html").is_file() and (merged / "report.md").is_file()
    partial = invoke(["report", str(folders[0]), "--no-examples"])  # partial: refused unless allowed
    line = one_error_line(partial.output)
    assert "partial run (shards 1/3, 2/3 missing)" in line and "--allow-partial" in line
    assert not (folders[0] / RUN_FILE).exists()
    partial = invoke(["report", str(folders[0]), "--no-examples", "--allow-partial"])
    assert partial.exit_code == 0 and "shard(s) 1/3, 2/3 missing" in partial.output
    assert "Partial run: missing cells" in (folders[0] / "report.md").read_text()
    assert invoke(["report", str(folders[0]), str(folders[1])]).exit_code != 0  # several folders need --out


def test_report_refuses_shards_of_another_configuration(ckpt_dir, data_root, cache_dir, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert invoke(shard_args(ckpt_dir, data_root, cache_dir, a, "0/2")).exit_code == 0
    assert invoke(shard_args(ckpt_dir, data_root, cache_dir, b, "1/2", seed=1)).exit_code == 0
    result = invoke(["report", str(a), str(b), "--out", str(tmp_path / "m")])
    line = one_error_line(result.output)
    assert "another configuration" in line and "seed: 0 -> 1" in line and str(b) in line
    assert not (tmp_path / "m" / RUN_FILE).exists()

    assert invoke(shard_args(ckpt_dir, data_root, cache_dir, c, "1/3")).exit_code == 0
    line = one_error_line(invoke(["report", str(a), str(c), "--out", str(tmp_path / "m")]).output)
    assert "shard counts 2, 3" in line
    shutil.copytree(a, tmp_path / "a-copy")
    line = one_error_line(invoke(["report", str(a), str(tmp_path / "a-copy"), "--out", str(tmp_path / "m")]).output)
    assert "shard 0/2 is there twice" in line

    # Into a shared folder, a shard of another configuration or split is refused before it writes.
    before = set(cell_files(a))
    line = one_error_line(invoke(shard_args(ckpt_dir, data_root, cache_dir, a, "1/2", seed=1)).output)
    assert "another configuration" in line and "seed: 0 -> 1" in line
    line = one_error_line(invoke(shard_args(ckpt_dir, data_root, cache_dir, a, "1/3")).output)
    assert "shard count 2, not 3" in line
    assert set(cell_files(a)) == before and not shard_dir(a, 1, 2).exists()


# --------------------------------------------------------------------------- one shared folder


@pytest.mark.slow
def test_shards_share_one_folder_at_once(base_run, ckpt_dir, data_root, cache_dir, tmp_path):
    """Two shard processes started together into one folder; then one report over it."""
    out = tmp_path / "shared"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "petseg_bench.cli",
                               *shard_args(ckpt_dir, data_root, cache_dir, out, f"{i}/2")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not (out / RUN_FILE).exists()
    with pytest.raises(PetsegError, match=f"only shard records: merge them with `petseg-bench report {out}`"):
        read_run(out)  # what check and baseline read

    result = invoke(["report", str(out), "--no-examples"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(cells_table(out), cells_table(base_run))
    assert json.loads((out / RUN_FILE).read_text())["cells_computed"] == len(cell_files(base_run))
    # Reported again (the shards' records are merged anew, the earlier merge is no source).
    assert invoke(["report", str(out), "--no-examples"]).exit_code == 0
    assert len(json.loads((out / RUN_FILE).read_text())["merged_from"]) == 2


def test_shared_folder_locks(ckpt_dir, data_root, cache_dir, tmp_path):
    """While a shard holds the folder, a report (or a full run) is refused, and the same
    shard twice too; while a report holds it, a shard is refused."""
    out = tmp_path / "shared"
    entered, leave = threading.Event(), threading.Event()

    def hold(shared: bool, shard: Shard | None):
        with folder_lock(out, shared=shared):
            if shard is not None:
                with folder_lock(shard.folder(out)):
                    entered.set()
                    leave.wait(60)
            else:
                entered.set()
                leave.wait(60)

    for shared, shard, args in ((True, Shard(0, 2), ["report", str(out)]),
                                (True, Shard(0, 2), cli_args(ckpt_dir, data_root, cache_dir, out)),
                                (True, Shard(0, 2), shard_args(ckpt_dir, data_root, cache_dir, out, "0/2")),
                                (False, None, shard_args(ckpt_dir, data_root, cache_dir, out, "1/2"))):
        entered.clear()
        leave.clear()
        holder = threading.Thread(target=hold, args=(shared, shard))
        holder.start()
        try:
            assert entered.wait(30)
            line = one_error_line(invoke(args).output)
            assert "in use by another petseg-bench process" in line, line
            if shared:  # another shard may join
                with folder_lock(out, shared=True), folder_lock(Shard(1, 2).folder(out)):
                    pass
        finally:
            leave.set()
            holder.join(60)
