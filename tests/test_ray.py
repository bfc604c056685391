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
from petseg_bench.errors import PetsegError
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
    job = SweepJob(plan=plan, checkpoints_dir=ckpt_dir, run_dir=out, data_root=data_root, cache_dir=cache_dir, precision="fp32", device="cpu", backend="ray")
    record = run_sweep(job, log=quiet)
    killer.join(5)
    assert killed, "no Ray worker was caught running a group"
    assert record.cells_computed == len(cell_files(base_run))
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


# --- the workers' niceness ------------------------------------------------------------------------


class FakeRay:
    """Records what ``ray.init`` saw of the environment (no Ray started)."""

    def __init__(self):
        self.seen = []

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.seen.append((os.environ.get("RAY_worker_niceness"), kwargs))


@pytest.mark.parametrize("given, before", [(0, None), (7, None), (19, "15"), (0, "19")])
def test_the_local_ray_starts_its_workers_at_the_niceness_given(given, before, monkeypatch):
    from petseg_bench.engine.ray_backend import connect

    if before is None:
        monkeypatch.delenv("RAY_worker_niceness", raising=False)
    else:
        monkeypatch.setenv("RAY_worker_niceness", before)
    ray = FakeRay()
    assert connect(ray, None, given) is True
    assert ray.seen[0][0] == str(given)  # what the raylet that ray.init starts reads
    assert os.environ.get("RAY_worker_niceness") == before  # this process's environment as it was


def test_ray_niceness_reaches_ray_init_from_the_command_line(tmp_path, monkeypatch):
    """``run --ray-niceness N`` -> the SweepJob -> the RayBackend -> the environment
    ``ray.init`` starts the raylet in (a fake Ray, stopped there)."""
    from petseg_bench.engine import ray_backend, sweep

    jobs = []

    def fake_run_sweep(job, **kwargs):
        jobs.append(job)
        raise PetsegError("stopped before the sweep")

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    for extra, want in ((["--ray-niceness", "5"], 5), ([], 0)):
        result = CliRunner().invoke(main, offline_args(tmp_path, "--backend", "ray", *extra))
        assert "stopped before the sweep" in one_error_line(result.output)
        assert jobs[-1].ray_niceness == want
    ray = FakeRay()
    monkeypatch.setattr(ray_backend, "import_ray", lambda: ray)
    monkeypatch.setattr(ray, "init", lambda **kw: ray.seen.append(os.environ.get("RAY_worker_niceness")) or 1 / 0)
    with pytest.raises(PetsegError, match="starting a local Ray: ZeroDivisionError"):
        ray_backend.RayBackend(jobs[0], quiet)
    assert ray.seen == ["5"]


def test_ray_niceness_is_for_a_local_ray(tmp_path):
    for extra, needle in ((["--ray-niceness", "3"], "--ray-niceness is for --backend ray"),
                          (["--backend", "ray", "--address", "10.0.0.1:6379", "--ray-niceness", "0"],
                           "--ray-niceness is for the local Ray a run starts")):
        result = CliRunner().invoke(main, offline_args(tmp_path, *extra))
        assert needle in one_error_line(result.output)
    result = CliRunner().invoke(main, offline_args(tmp_path, "--backend", "ray", "--ray-niceness", "20"))
    assert result.exit_code == 2 and "0<=x<=19" in result.output


NICE_PROBE = """
import json, os, ray
from petseg_bench.engine.ray_backend import connect
connect(ray, None, int(os.environ["WANT"]))
nice = ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote())
ray.shutdown()
print(json.dumps({"driver": os.nice(0), "worker": nice}))
"""


@pytest.mark.slow
def test_a_local_rays_workers_really_run_at_that_niceness():
    pytest.importorskip("ray")
    out = {}
    for want in (0, 4):
        done = subprocess.run([sys.executable, "-c", NICE_PROBE], capture_output=True, text=True, timeout=180,
                              env={**ENV, "WANT": str(want)})
        assert done.returncode == 0, done.stderr[-2000:]
        out[want] = json.loads(done.stdout.strip().splitlines()[-1])
    for want, seen in out.items():
        assert seen["worker"] == min(19, seen["driver"] + want), out
