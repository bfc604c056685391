"""``run --backend ray``: the groups as Ray tasks on a local Ray the test starts (2 CPUs,
127.0.0.1), the same cells as a local sweep, a worker killed mid-task (its group is run
again, no cell lost or written twice), a cluster joined by ``--address``, and the one-line
errors: no Ray installed, an address where nothing answers.

The tiny set-up of ``test_sweep`` (its fixtures and its reference run).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from petseg_bench.cli import main
from petseg_bench.engine.sweep import SweepJob, SweepPlan, run_sweep
from petseg_bench.results import RUN_FILE, load_run

from conftest import one_error_line, quiet
from test_sweep import (LEVELS, MODELS, PERTS, base_run, cache_dir, cells_table, cell_files, ckpt_dir,  # noqa: F401
                        cli_args, copy_run, data_root, sweep)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray with two CPUs on this machine; yields its address for other processes
    (which join with the token Ray writes to ~/.ray/auth_token: RAY_AUTH_MODE=token)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def group_workers() -> list[int]:
    """PIDs of Ray workers running a sweep group right now (Ray titles a busy worker
    ``ray::<task>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::group_on_worker"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_ray_sweep_equals_the_local_one_and_survives_a_killed_worker(ray_address, base_run, ckpt_dir, data_root,
                                                                    cache_dir, tmp_path):
    out, killed = tmp_path / "run", []

    def kill_one_busy_worker():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            busy = group_workers()
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_busy_worker, daemon=True)
    killer.start()
    plan = SweepPlan(list(MODELS), list(PERTS), list(LEVELS), batch_size=1)  # small batches: long enough to be caught
    job = SweepJob(plan, ckpt_dir, out, data_root, cache_dir=cache_dir, precision="fp32", device="cpu", backend="ray")
    record = run_sweep(job, log=quiet)
    killer.join(5)
    assert killed, "no Ray worker was caught running a group"
    assert record["cells_computed"] == len(cell_files(base_run))
    assert set(cell_files(out)) == set(cell_files(base_run))  # none lost
    df = load_run(out)
    assert not df.duplicated(["model", "perturbation", "level", "image_id"]).any()  # none twice
    pd.testing.assert_frame_equal(cells_table(out), cells_table(base_run))  # the local sweep's cells (batch size 3)
    saved = json.loads((out / RUN_FILE).read_text())
    assert saved["device"] == json.loads((base_run / RUN_FILE).read_text())["device"]
    assert saved["model_info"].keys() == set(MODELS)


@pytest.mark.slow
def test_ray_cluster_by_address_resumes_like_a_local_run(ray_address, base_run, ckpt_dir, data_root, cache_dir,
                                                        tmp_path):
    """Another process joins the test's Ray by --address and finishes a run with --resume."""
    run_dir = copy_run(base_run, tmp_path / "run")
    gone = ["cells/unet/occlusion-L5.parquet", "cells/point_clip_unet/clean.parquet"]
    for name in gone:
        (run_dir / name).unlink()
    args = cli_args(ckpt_dir, data_root, cache_dir, run_dir, "--resume", "--backend", "ray", "--address", ray_address)
    done = subprocess.run([sys.executable, "-m", "petseg_bench.cli", *args], capture_output=True, text=True,
                          env={**ENV, "RAY_AUTH_MODE": "token"}, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 cells computed" in done.stdout and "ray: 1 node(s), 2 CPUs" in done.stderr
    pd.testing.assert_frame_equal(cells_table(run_dir), cells_table(base_run))


def offline_args(tmp_path: Path, *extra: str) -> list[str]:
    """``run`` arguments whose checkpoints and data are never reached (the errors come first)."""
    return cli_args(tmp_path / "ckpt", tmp_path / "data", tmp_path / "cache", tmp_path / "run", *extra)


def test_unreachable_address_is_one_line_within_30_s(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = offline_args(tmp_path, "--backend", "ray", "--address", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "petseg_bench.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=60)
    assert time.monotonic() - t0 < 30
    line = one_error_line(done.stdout + done.stderr)
    assert f"--address 127.0.0.1:{port}: nothing answers there" in line and "ray start --head" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_address_that_is_no_ray_cluster_is_one_line_within_30_s(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as server:  # something listens, but speaks no Ray
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        args = offline_args(tmp_path, "--backend", "ray", "--address", f"127.0.0.1:{port}")
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "petseg_bench.cli", *args], capture_output=True, text=True,
                              env=ENV, timeout=60)
        assert time.monotonic() - t0 < 30
    line = one_error_line(done.stdout + done.stderr)
    assert f"--address 127.0.0.1:{port}" in line and "Ray" in line


def test_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as where it is not installed
    result = CliRunner().invoke(main, offline_args(tmp_path, "--backend", "ray"))
    line = one_error_line(result.output)
    assert "--backend ray needs Ray" in line and "pip install 'petseg-bench[ray]'" in line


def test_ray_options_need_the_ray_backend(tmp_path):
    for extra, needle in ((["--address", "10.0.0.1:6379"], "--address is for --backend ray"),
                          (["--cpus-per-task", "2"], "--cpus-per-task is for --backend ray")):
        result = CliRunner().invoke(main, offline_args(tmp_path, *extra))
        assert needle in one_error_line(result.output)
