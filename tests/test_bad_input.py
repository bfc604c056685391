"""Nothing lost, nothing silent (issue 10, section 2).

Every case here is bad input, a failure or an interruption: each must end in one line
naming the file or option and what is wrong, a non-zero exit, and no result lost or
mixed. A tiny synthetic dataset (6 trainval + 6 test images of 40x56 px) and a tiny
U-Net (32 px input, 4 base channels, one epoch) on the CPU in fp32.
"""

from __future__ import annotations

import re

import errno
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner

from petseg_bench.atomic import write_bytes_atomic
from petseg_bench.cli import main
from petseg_bench.config import TrainConfig
from petseg_bench.engine import checkpoint
from petseg_bench.engine import hooks as hooks_mod
from petseg_bench.engine import lock as lock_mod
from petseg_bench.engine import predictor as predictor_mod
from petseg_bench.engine import sweep as sweep_mod
from petseg_bench.engine import training as training_mod
from petseg_bench.engine.lock import LOCK_FILE, folder_lock
from petseg_bench.engine.sweep import parse_levels
from petseg_bench.errors import PetsegError, os_error_text
from petseg_bench.results import RUN_FILE, Cell, read_cell

from conftest import quiet, train, write_dataset

SIZE = (40, 56)
TINY = dict(in_size=32, base_channels=4)
TINY_ARGS = ["--in-size", "32", "--base-channels", "4", "--batch-size", "4", "--workers", "0",
             "--val-fraction", "0.25", "--precision", "fp32", "--device", "cpu"]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:626] . unexpected pos 4480 vs 4368"


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=4, workers=0, precision="fp32", device="cpu", seed=3, val_fraction=0.25,
                lr=1e-3, patience=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=3, n_dog=3, size=SIZE)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, data_root, cache_dir) -> Path:
    """A checkpoints folder with a one-epoch tiny unet."""
    out = tmp_path_factory.mktemp("checkpoints")
    train("unet", tiny_cfg(), TINY, data_root, out, cache_dir=cache_dir, log=quiet)
    return out


@dataclass
class Cli:
    """Arguments of the three commands on the tiny setup."""

    data_root: Path
    cache_dir: Path
    ckpts: Path
    tmp: Path

    def data(self) -> list[str]:
        return ["--data-root", str(self.data_root), "--cache-dir", str(self.cache_dir)]

    def train(self, out: Path, *extra: str) -> list[str]:
        return ["train", "unet", "--profile", "quick", "--out", str(out), "--epochs", "1", *TINY_ARGS,
                *self.data(), *extra]

    def run(self, out: Path, *extra: str) -> list[str]:
        return ["run", "--models", "unet", "--perturbations", "gaussian_noise", "--levels", "1",
                "--checkpoints", str(self.ckpts), "--out", str(out), "--batch-size", "3", "--precision", "fp32",
                "--device", "cpu", "--no-report", *self.data(), *extra]

    def evaluate(self, ckpt: Path, *extra: str) -> list[str]:
        return ["evaluate", str(ckpt), "--bootstrap", "5", "--batch-size", "4", "--precision", "fp32",
                "--device", "cpu", "--out", str(self.tmp / "eval.json"), *self.data(), *extra]


@pytest.fixture
def cli(data_root, cache_dir, ckpts, tmp_path) -> Cli:
    return Cli(data_root, cache_dir, ckpts, tmp_path)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data_root, cache_dir, ckpts) -> Path:
    """A finished sweep (unet, gaussian_noise level 1, fp32, batch 3): tests copy it."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = invoke(Cli(data_root, cache_dir, ckpts, out.parent).run(out))
    assert result.exit_code == 0, result.output
    return out


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def error_line(result) -> str:
    """The failed call's one ``Error:`` line: the last line on stderr, the only one that
    starts so, and no traceback anywhere."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def only_line(result) -> str:
    """As :func:`error_line`, and nothing else was printed."""
    line = error_line(result)
    assert [ln for ln in result.output.splitlines() if ln.strip()] == [line], result.output
    return line


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove a refusal changed nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- options that cannot run


@dataclass
class Case:
    id: str
    args: Callable[[Cli, Path], list[str]]  # (cli, out) -> argv
    needles: tuple[str, ...]


REFUSED = [
    Case("levels-range-backwards", lambda c, o: c.run(o, "--levels", "3-1"), ("--levels", "'3-1'", "empty")),
    Case("run-limit-0", lambda c, o: c.run(o, "--limit", "0"), ("--limit", "0")),
    Case("run-seed-negative", lambda c, o: c.run(o, "--seed", "-1"), ("--seed", "-1")),
    Case("run-seed-too-big", lambda c, o: c.run(o, "--seed", str(2**40)), ("--seed",)),
    Case("evaluate-limit-0", lambda c, o: c.evaluate(c.ckpts / "unet" / "best.pt", "--limit", "0"), ("--limit", "0")),
    Case("evaluate-limit-negative", lambda c, o: c.evaluate(c.ckpts / "unet" / "best.pt", "--limit", "-3"), ("--limit",)),
    Case("evaluate-out-under-a-file",
         lambda c, o: c.evaluate(c.ckpts / "unet" / "best.pt", "--out", str(c.ckpts / "unet" / "best.pt" / "x.json")),
         ("best.pt", "is a file, not a folder")),
    Case("evaluate-out-is-a-folder", lambda c, o: c.evaluate(c.ckpts / "unet" / "best.pt", "--out", str(c.ckpts)),
         ("is a folder",)),
    Case("train-seed-negative", lambda c, o: c.train(o, "--seed", "-1"), ("--seed", "-1")),
    Case("train-no-loss", lambda c, o: c.train(o, "--ce-weight", "0", "--dice-weight", "0"),
         ("--ce-weight", "--dice-weight", "no loss")),
    Case("train-lr-inf", lambda c, o: c.train(o, "--lr", "inf"), ("--lr", "finite")),
    Case("train-lr-nan", lambda c, o: c.train(o, "--lr", "nan"), ("--lr", "finite")),
    Case("train-weight-decay-nan", lambda c, o: c.train(o, "--weight-decay", "nan"), ("--weight-decay",)),
    Case("train-resume-and-overwrite", lambda c, o: c.train(o, "--resume", "--overwrite"), ("--resume", "--overwrite")),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_in_one_line_before_writing_anything(case, cli, tmp_path):
    out = tmp_path / "out"
    before = tree(cli.ckpts)
    line = only_line(invoke(case.args(cli, out)))
    for needle in case.needles:
        assert needle in line, line
    assert not out.exists()  # nothing written: no run.json, no cell, no checkpoint folder
    assert not (tmp_path / "eval.json").exists()
    assert tree(cli.ckpts) == before


def test_parse_levels_refuses_a_backwards_range():
    with pytest.raises(PetsegError, match="'3-1'.*empty") as info:
        parse_levels("3-1")
    assert "\n" not in str(info.value)


def test_train_config_refuses_no_loss_and_non_finite_numbers():
    for bad, needle in ((dict(ce_weight=0.0, dice_weight=0.0), "no loss"), (dict(lr=float("inf")), "--lr"),
                        (dict(grad_clip=float("nan")), "--grad-clip"), (dict(class_weights=(1.0, float("nan"), 1.0)),
                                                                          "--class-weights"),
                        (dict(seed=-1), "--seed"), (dict(augment="heavy"), "--augment must be one of"),
                        (dict(salt_pepper=1.5), "--salt-pepper")):
        with pytest.raises(PetsegError, match=needle):
            tiny_cfg(**bad).validate()
    tiny_cfg(ce_weight=0.0).validate()  # one of the two may be 0


# --------------------------------------------------------------------------- data loss: train into an existing run


def test_train_into_an_existing_run_is_refused_and_overwrite_replaces_it(cli, tmp_path):
    out = tmp_path / "ckpts"
    first = invoke(cli.train(out))
    assert first.exit_code == 0, first.output
    before = tree(out)
    assert {"unet/best.pt", "unet/last.pt", "unet/metrics.jsonl"} <= set(before)

    line = only_line(invoke(cli.train(out)))
    assert str(out / "unet") in line and "--resume" in line and "--overwrite" in line and "--out" in line
    assert tree(out) == before  # nothing overwritten, metrics.jsonl kept

    again = invoke(cli.train(out, "--overwrite", "--seed", "5"))
    assert again.exit_code == 0, again.output
    assert "--overwrite: removed the previous" in again.stderr
    assert checkpoint.load(out / "unet" / "best.pt")["train_config"]["seed"] == 5
    rows = (out / "unet" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]


def test_train_resume_without_last_starts_from_scratch(cli, tmp_path):
    out = tmp_path / "ckpts"
    result = invoke(cli.train(out, "--resume"))
    assert result.exit_code == 0, result.output
    assert "does not exist; starting from scratch" in result.stderr
    assert (out / "unet" / "best.pt").is_file()


def test_run_train_missing_trains_once_then_reuses(cli, tmp_path):
    """`make demo`'s call: checkpoints inside the run folder, --train-missing --resume, twice."""
    out = tmp_path / "demo"
    args = cli.run(out, "--train-missing", "--resume", "--limit", "4")
    args[args.index("--checkpoints") + 1] = str(out / "checkpoints")
    first = invoke(args)
    assert first.exit_code == 0, first.output
    best = out / "checkpoints" / "unet" / "best.pt"
    stamp = best.stat().st_mtime_ns
    second = invoke(args)
    assert second.exit_code == 0, second.output
    assert "training unet" not in second.output and "0 cells computed" in second.output
    assert best.stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- one writer per folder


def test_folder_lock_refuses_a_second_holder(tmp_path):
    folder = tmp_path / "out"
    entered, leave = threading.Event(), threading.Event()

    def hold():
        with folder_lock(folder):
            entered.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(30)
        with pytest.raises(PetsegError) as info:
            with folder_lock(folder):
                pass
        message = str(info.value)
        assert str(folder) in message and "in use" in message and f"pid {os.getpid()}" in message
        assert "\n" not in message
    finally:
        leave.set()
        holder.join(30)
    with folder_lock(folder):  # released: the next writer gets it, and may take it again
        with folder_lock(folder):
            pass
    assert not folder.exists()  # created by the lock, empty: removed with it


def test_concurrent_run_and_train_are_refused(cli, tmp_path):
    out = tmp_path / "run"
    entered, leave = threading.Event(), threading.Event()

    def hold(folder):
        with folder_lock(folder):
            entered.set()
            leave.wait(60)

    for folder, args in ((out, cli.run(out)), (tmp_path / "ckpts" / "unet", cli.train(tmp_path / "ckpts"))):
        entered.clear()
        leave.clear()
        holder = threading.Thread(target=hold, args=(folder,))
        holder.start()
        try:
            assert entered.wait(30)
            line = only_line(invoke(args))
            assert str(folder) in line and "in use by another petseg-bench process" in line
            assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # the second writer wrote nothing
        finally:
            leave.set()
            holder.join(60)


HOLD_LOCK = """
import sys, time
from petseg_bench.engine.lock import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


def test_lock_of_a_killed_process_is_free_and_its_temp_files_go(cli, base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        line = only_line(invoke(cli.run(run_dir, "--resume")))
        assert str(run_dir) in line and f"pid {proc.pid}" in line
        # What a writer killed in mid-write leaves: temporary files named with its PID.
        leftovers = [run_dir / f".{RUN_FILE}.tmp-{proc.pid}", run_dir / "cells" / "unet" / f".clean.parquet.tmp-{proc.pid}"]
        for p in leftovers:
            p.write_bytes(b"half")
        live = run_dir / "cells" / "unet" / f".other.parquet.tmp-{os.getppid()}"  # a live writer's: kept
        live.write_bytes(b"x")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    assert (run_dir / LOCK_FILE).exists()  # kill -9 left the file; the OS dropped the lock
    result = invoke(cli.run(run_dir, "--resume"))
    assert result.exit_code == 0, result.output
    assert "0 cells computed" in result.output and "removed 2 temporary file(s)" in result.stderr
    assert not any(p.exists() for p in leftovers) and live.exists()


def test_stale_temp_files_of_a_training_folder_are_removed(cli, tmp_path):
    out = tmp_path / "ckpts"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / "unet").mkdir(parents=True)
    stale = out / "unet" / f".last.pt.tmp-{pid}"
    stale.write_bytes(b"PK half a checkpoint")
    alive = out / "unet" / f".best.pt.tmp-{os.getppid()}"  # a live process: a writer still at work
    alive.write_bytes(b"PK")
    result = invoke(cli.train(out))
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists()


# --------------------------------------------------------------------------- non-finite weights


def test_diverging_training_stops_and_keeps_the_last_good_checkpoint(cli, tmp_path):
    """--lr 1e10: the BatchNorm statistics overflow in the second epoch while the loss stays
    finite; nothing of that epoch is saved or logged."""
    out = tmp_path / "ckpts"
    result = invoke(cli.train(out, "--lr", "1e10", "--epochs", "3"))
    line = error_line(result)
    assert ("diverged at epoch" in line and "not finite" in line and "--lr" in line) or "loss is" in line, line
    assert f"last good checkpoint kept: {out / 'unet' / 'last.pt'}" in line or "no checkpoint was written" in line
    last = out / "unet" / "last.pt"
    if last.exists():
        epoch = checkpoint.load(last)["loop"]["epoch"]
        rows = [json.loads(r) for r in (out / "unet" / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, epoch + 1))
        for name in ("best.pt", "last.pt"):
            predictor_mod.load_predictor(out / "unet" / name)  # finite, so it loads


def test_non_finite_weights_are_never_saved(ckpts, tmp_path, monkeypatch):
    real_step = training_mod.TrainLoop.step

    def step(self, batch, loss_kind, index):  # the second epoch blows three weights up, the loss stays finite
        loss = real_step(self, batch, loss_kind, index)
        if self.state.epoch >= 1:
            p = next(self.ctx.model.parameters())
            mask = torch.zeros(p.numel(), dtype=torch.bool)
            mask[:3] = True
            with torch.no_grad():
                p.masked_fill_(mask.view(p.shape), float("inf"))
        return loss

    monkeypatch.setattr(training_mod.TrainLoop, "step", step)
    data_root = write_dataset(tmp_path / "pets", n_cat=3, n_dog=3, size=SIZE)
    out = tmp_path / "ckpts"
    with pytest.raises(PetsegError) as info:
        train("unet", tiny_cfg(epochs=3), TINY, data_root, out, log=quiet)
    message = str(info.value)
    assert "diverged at epoch 2" in message and "3 of" in message and str(out / "unet" / "last.pt") in message
    assert checkpoint.load(out / "unet" / "last.pt")["loop"]["epoch"] == 1
    assert len((out / "unet" / "metrics.jsonl").read_text().splitlines()) == 1

    good = checkpoint.load(ckpts / "unet" / "best.pt")
    path = tmp_path / "x" / "best.pt"
    checkpoint.save(path, {k: v for k, v in good.items() if k not in ("format", "format_version")})
    before = path.read_bytes()
    state = {k: v.clone() for k, v in good["state_dict"].items()}
    state[_first_weight(good)].view(-1)[0] = float("nan")
    with pytest.raises(PetsegError, match="refused to write checkpoint .*1 of .* not finite.*previous one is kept"):
        checkpoint.save(path, {**good, "state_dict": state})
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]


# --------------------------------------------------------------------------- damaged checkpoints


def _doctor(change: Callable[[dict], None]) -> Callable[[dict], dict]:
    def apply(data: dict) -> dict:
        data = {**data, "state_dict": dict(data["state_dict"]), "model_config": dict(data["model_config"])}
        change(data)
        return data
    return apply


def _first_weight(data: dict) -> str:
    return next(k for k, v in data["state_dict"].items() if v.is_floating_point() and v.dim() == 4)


CHECKPOINTS = [
    ("no-model", _doctor(lambda d: d.pop("model")), "has no 'model'"),
    ("no-state-dict", _doctor(lambda d: d.pop("state_dict")), "has no 'state_dict'"),
    ("state-dict-a-string", _doctor(lambda d: d.update(state_dict="weights")), "'state_dict' is a str, not a dict"),
    ("model-config-a-string", _doctor(lambda d: d.update(model_config="unet")), "'model_config' is a str"),
    ("options-a-string", _doctor(lambda d: d["model_config"].update(options="x")), "options"),
    ("train-config-a-list", _doctor(lambda d: d.update(train_config=[1, 2])), "'train_config' is a list"),
    ("weight-a-string", _doctor(lambda d: d["state_dict"].update({_first_weight(d): "0.5"})), "is a str, not a tensor"),
    ("weight-wrong-shape", _doctor(lambda d: d["state_dict"].update({_first_weight(d): torch.zeros(2, 2)})),
     "does not fit model unet"),
    ("weight-missing", _doctor(lambda d: d["state_dict"].pop(_first_weight(d))), "mismatched weights"),
    ("weights-nan", _doctor(lambda d: d["state_dict"].update(
        {_first_weight(d): torch.full_like(d["state_dict"][_first_weight(d)], float("nan"))})), "not finite"),
    ("unknown-model", _doctor(lambda d: d.update(model="no_such_model")), "no_such_model"),
]


@pytest.mark.parametrize("name,doctor,needle", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_damaged_checkpoint_is_one_line_naming_it(name, doctor, needle, cli, tmp_path):
    data = torch.load(cli.ckpts / "unet" / "best.pt", weights_only=True)
    path = tmp_path / f"{name}.pt"
    torch.save(doctor(data), path)
    line = only_line(invoke(cli.evaluate(path)))
    assert str(path) in line and needle in line, line
    assert not (tmp_path / "eval.json").exists()


def test_nan_checkpoint_names_how_many_values(cli, tmp_path):
    data = torch.load(cli.ckpts / "unet" / "best.pt", weights_only=True)
    key = _first_weight(data)
    data["state_dict"][key] = data["state_dict"][key].clone()
    data["state_dict"][key].view(-1)[:5] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(data, path)
    with pytest.raises(PetsegError, match=rf"{path}.*5 of \d+ weight values are not finite"):
        predictor_mod.load_predictor(path)


def test_train_resume_refuses_best_copied_over_last_and_a_damaged_loop(cli, tmp_path):
    out = tmp_path / "ckpts"
    assert invoke(cli.train(out)).exit_code == 0
    last = out / "unet" / "last.pt"
    good = last.read_bytes()
    shutil.copyfile(out / "unet" / "best.pt", last)
    line = only_line(invoke(cli.train(out, "--resume")))
    assert str(last) in line and "no training state" in line

    data = torch.load(io.BytesIO(good), weights_only=True)
    data["loop"] = {**data["loop"], "epoch": "one"}
    torch.save(data, last)
    line = only_line(invoke(cli.train(out, "--resume")))
    assert str(last) in line and "damaged training state" in line


# --------------------------------------------------------------------------- resume must match the runtime


@pytest.mark.parametrize("option,value,needle", [
    ("--precision", "bf16", "precision: 'fp32' -> 'bf16'"),
    ("--batch-size", "4", "batch_size: 3 -> 4"),
    ("--compile", None, "compile: False -> True"),
])
def test_run_resume_refuses_another_runtime(option, value, needle, cli, base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    before = tree(run_dir)
    args = cli.run(run_dir, "--resume")
    if value is None:
        args.append(option)
    else:
        args[args.index(option) + 1] = value
    line = only_line(invoke(args))
    assert "another configuration" in line and needle in line, line
    assert tree(run_dir) == before


def test_run_resume_refuses_another_device_and_reads_old_records(cli, base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    record = json.loads((run_dir / RUN_FILE).read_text())
    assert record["precision"] == "fp32" and record["device"].startswith("cpu (") and record["batch_size"] == 3
    (run_dir / RUN_FILE).write_text(json.dumps({**record, "device": "cuda (NVIDIA H100 80GB HBM3)"}))
    line = only_line(invoke(cli.run(run_dir, "--resume")))
    assert "device: 'cuda (NVIDIA H100 80GB HBM3)' -> 'cpu" in line

    # A record from before these keys: its runtime line says fp32 on a CPU.
    old = {k: v for k, v in record.items() if k not in ("precision", "device")}
    (run_dir / RUN_FILE).write_text(json.dumps(old))
    args = cli.run(run_dir, "--resume")
    args[args.index("--precision") + 1] = "bf16"
    line = only_line(invoke(args))
    assert "precision: 'fp32' -> 'bf16'" in line
    result = invoke(cli.run(run_dir, "--resume"))
    assert result.exit_code == 0, result.output
    assert "0 cells computed" in result.output


# --------------------------------------------------------------------------- write failures


@pytest.fixture
def full_disk(monkeypatch):
    """Every fsync (the last step of every write of ours) fails as on a full disk."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_in_run_is_one_line_and_loses_nothing(cli, base_run, tmp_path, full_disk):
    fresh = tmp_path / "fresh"
    line = only_line(invoke(cli.run(fresh)))
    assert line == f"Error: could not write {fresh / RUN_FILE}: no space left on device"
    assert not fresh.exists()

    run_dir = copy_run(base_run, tmp_path / "run")
    Cell("unet", "gaussian_noise", 1).path(run_dir).unlink()  # one cell to compute
    before = tree(run_dir)
    line = only_line(invoke(cli.run(run_dir, "--resume")))
    assert f"could not write {run_dir / RUN_FILE}: no space left on device" in line
    assert tree(run_dir) == before


def test_full_disk_in_train_evaluate_and_report(cli, base_run, tmp_path, full_disk):
    out = tmp_path / "ckpts"
    line = error_line(invoke(cli.train(out)))
    assert f"could not write checkpoint {out / 'unet' / 'best.pt'}: no space left on device" in line
    assert not (out / "unet").exists() or sorted(p.name for p in (out / "unet").iterdir()) == []

    line = only_line(invoke(cli.evaluate(cli.ckpts / "unet" / "best.pt")))
    assert line == f"Error: could not write {tmp_path / 'eval.json'}: no space left on device"

    run_dir = copy_run(base_run, tmp_path / "run")
    line = error_line(invoke(["report", str(run_dir), "--no-examples"]))
    assert "could not write" in line and str(run_dir) in line and "no space left on device" in line


def test_read_only_folders(cli, tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(lock_mod.os, "open", read_only)
    out = tmp_path / "run"
    line = only_line(invoke(cli.run(out)))
    assert line == f"Error: could not write to folder {out}: read-only file system"
    line = only_line(invoke(cli.train(tmp_path / "ckpts")))
    assert f"could not write to folder {tmp_path / 'ckpts' / 'unet'}: read-only file system" in line
    monkeypatch.undo()

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != tmp_path and real_access(path, mode, **kw))
    line = only_line(invoke(cli.evaluate(cli.ckpts / "unet" / "best.pt")))
    assert str(tmp_path / "eval.json") in line and "permission denied" in line


def test_torch_writer_text_reads_as_a_full_disk(ckpts, tmp_path, monkeypatch):
    assert os_error_text(RuntimeError(TORCH_DISK_FULL)) == "no space left on device"
    assert os_error_text(ENOSPC) == "no space left on device"

    def broken(obj, f, *args, **kwargs):
        raise RuntimeError(TORCH_DISK_FULL)

    good = checkpoint.load(ckpts / "unet" / "best.pt")
    monkeypatch.setattr(checkpoint.torch, "save", broken)
    path = tmp_path / "best.pt"
    with pytest.raises(PetsegError) as info:
        checkpoint.save(path, {k: v for k, v in good.items() if k not in ("format", "format_version")})
    assert str(info.value) == f"could not write checkpoint {path}: no space left on device; nothing was written"

    def fsync(fd):
        raise ENOSPC

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:  # a WriteError is also an OSError, for callers that catch those
        write_bytes_atomic(tmp_path / "a.json", b"{}")
    assert str(info.value) == f"could not write {tmp_path / 'a.json'}: no space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- Ctrl-C


def _resume_command(line: str) -> list[str]:
    command = line.split("`")[1]
    argv = shlex.split(command)
    assert argv[0] == "petseg-bench" and argv[-1] == "--resume"
    return argv[1:]


def test_ctrl_c_in_train_says_how_to_resume(cli, tmp_path, monkeypatch):
    real = hooks_mod.Console.after_record

    def interrupt(self, loop):
        real(self, loop)
        raise KeyboardInterrupt

    monkeypatch.setattr(hooks_mod.Console, "after_record", interrupt)
    out = tmp_path / "ckpts"
    result = invoke(cli.train(out, "--epochs", "2"))
    assert result.exit_code == 130 and "Traceback" not in result.output
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("interrupted;") and "--resume" in last_line
    assert [p.name for p in (out / "unet").iterdir() if p.name.startswith(".")] == []  # no lock, no temp left
    monkeypatch.undo()
    result = invoke(_resume_command(last_line))
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.stderr
    assert checkpoint.load(out / "unet" / "last.pt")["loop"]["epoch"] == 2


def test_ctrl_c_in_run_says_how_to_resume(cli, tmp_path, monkeypatch):
    real, calls = sweep_mod.write_cell, []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "write_cell", interrupt)
    out = tmp_path / "run"
    result = invoke(cli.run(out))
    assert result.exit_code == 130 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted;") and str(out) in line
    monkeypatch.undo()
    result = invoke(_resume_command(line))
    assert result.exit_code == 0, result.output
    assert "resume: 1 finished cells kept, 1 to compute" in result.output


# --------------------------------------------------------------------------- plugins failing at run time


def _failing_build(real):
    def build(spec, config, runtime, seed=None):
        model = real(spec, config, runtime, seed)

        def forward(*args, **kwargs):
            raise RuntimeError("boom in forward")

        model.forward = forward
        return model
    return build


def test_model_forward_failing_names_the_model_and_where(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(predictor_mod, "build_model", _failing_build(predictor_mod.build_model))
    monkeypatch.setattr(training_mod, "build_model", _failing_build(training_mod.build_model))
    out = tmp_path / "run"
    line = only_line(invoke(cli.run(out)))
    assert line == "Error: model unet failed in cell (clean, level 0): RuntimeError: boom in forward"
    assert read_cell(out, Cell("unet", "clean", 0)) is None

    ckpt = cli.ckpts / "unet" / "best.pt"
    line = only_line(invoke(cli.evaluate(ckpt)))
    assert line == f"Error: model unet failed evaluating {ckpt} on the test split: RuntimeError: boom in forward"

    line = only_line(invoke(cli.train(tmp_path / "ckpts")))
    assert line == "Error: model unet failed training at epoch 1 step 1: RuntimeError: boom in forward"
    assert not (tmp_path / "ckpts" / "unet").exists()


# --------------------------------------------------------------------------- dropped images


def test_dropped_images_are_announced_by_train_evaluate_and_run(tmp_path, cache_dir):
    root = write_dataset(tmp_path / "pets", n_cat=3, n_dog=3, size=SIZE)
    for name in ("beagle_1", "beagle_100"):  # one undecodable image in trainval, one in test
        (root / "images" / f"{name}.jpg").write_bytes(b"not a jpeg")
    cli = Cli(root, tmp_path / "prepared", tmp_path / "ckpts", tmp_path)
    def listed(stderr: str, split: str) -> str:
        found = re.search(rf"1 {split} image dropped \(list: (\S+)\)", stderr)
        assert found, stderr
        return Path(found.group(1)).read_text()

    result = invoke(cli.train(cli.ckpts))
    assert result.exit_code == 0, result.output
    assert "beagle_1.jpg" in listed(result.stderr, "trainval")

    result = invoke(cli.evaluate(cli.ckpts / "unet" / "best.pt"))
    assert result.exit_code == 0, result.output
    assert "beagle_100.jpg" in listed(result.stderr, "test")

    result = invoke(cli.run(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "beagle_100.jpg" in listed(result.stderr, "test")
