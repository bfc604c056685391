"""Plugins that misbehave at run time: ``sys.exit`` or an exception inside a plugin's code
(a perturbation's ``apply``, a metric, a model's build or forward) during ``run``,
``train`` or ``evaluate`` is one line naming the plugin (and the cell where there is
one), a non-zero exit, no traceback, the inputs untouched and nothing half-written.

Before: a perturbation calling ``sys.exit(0)`` ended ``run`` with exit 0, no message and
only the clean cell written; a metric that raised or returned a non-number gave a
traceback in ``evaluate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import one_error_line, quiet, train, write_dataset
from petseg_bench.cli import main
from petseg_bench.config import TrainConfig
from petseg_bench.errors import PluginError, plugin_code
from petseg_bench.plugins import get_registry
from petseg_bench.results import RUN_FILE
from petseg_bench.specs import MetricSpec, PerturbationSpec

TINY = dict(in_size=32, base_channels=4)
TRAIN = TrainConfig(epochs=1, lr=1e-2, batch_size=4, workers=0, precision="fp32", device="cpu",
                    val_fraction=0.25, patience=0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=3, n_dog=3, size=(40, 56))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, data_root, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("checkpoints")
    train("unet", TRAIN, TINY, data_root, out, cache_dir=cache_dir, log=quiet)
    return out


def digest(*folders: Path) -> dict[str, str]:
    """Every file under ``folders``, by content: the inputs must come out byte-identical."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


# --- plugins -------------------------------------------------------------------------------------


def identity(images, value, rngs):
    return [im.copy() for im in images]


def exits(code):
    def apply(images, value, rngs):
        sys.exit(code)
    return apply


def exits_in_a_worker_thread(images, value, rngs):
    """Fine on the caller's thread; sys.exit on the sweep's helper threads (in_parallel)."""
    if threading.current_thread() is not threading.main_thread():
        sys.exit(0)
    return identity(images, value, rngs)


def raises(images, value, rngs):
    raise RuntimeError("the fog machine broke")


def answers(value):
    def fn(cm):
        return value
    return fn


def metric_exits(cm):
    sys.exit(0)


def metric_raises(cm):
    return 1 / 0


# --- run: perturbation apply and model forward ----------------------------------------------------


RUN_CASES = {
    "perturbation sys.exit(0)": (exits(0), "perturbation bad_pert level 1 failed on image ", "called sys.exit(0)"),
    "perturbation sys.exit('bye')": (exits("bye"), "perturbation bad_pert level 1 failed on ", "called sys.exit('bye')"),
    "perturbation sys.exit in a worker thread": (exits_in_a_worker_thread, "perturbation bad_pert level 1 failed on ",
                                                 "called sys.exit(0)"),
    "perturbation raising": (raises, "perturbation bad_pert level 1 failed on image ",
                             "RuntimeError: the fog machine broke"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_perturbation_faults_are_one_line(case, monkeypatch, ckpt_dir, data_root, cache_dir, tmp_path):
    apply, where, what = RUN_CASES[case]
    monkeypatch.setitem(get_registry().perturbations, "bad_pert", PerturbationSpec("bad_pert", "x", (0.0, 1.0, 2.0), apply))
    if "thread" in case:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # in_parallel splits the batch over 2 threads
    before = digest(ckpt_dir, data_root)
    out = tmp_path / "run"
    code, output = invoke(["run", "--models", "unet", "--perturbations", "bad_pert", "--levels", "1,2",
                           "--checkpoints", ckpt_dir, "--out", out, "--data-root", data_root, "--cache-dir", cache_dir,
                           "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-report"])
    assert code == 1, output
    line = one_error_line(output)
    assert where in line and line.endswith(what), line
    assert digest(ckpt_dir, data_root) == before
    assert_nothing_half_written(out, "bad_pert")


def assert_nothing_half_written(run_dir: Path, pert: str) -> None:
    """No cell of the failing perturbation, no temporary file, the run not marked finished."""
    files = [p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file()]
    assert not [f for f in files if pert in str(f)], files
    assert not [f for f in files if ".tmp" in f.name or f.name.startswith(".")], files
    record = run_dir / RUN_FILE
    if record.is_file():
        assert '"finished"' not in record.read_text()


def forward_fails(exc: BaseException):
    """The unet spec, with a model whose forward raises ``exc`` (sys.exit: SystemExit)."""
    spec = get_registry().get("model", "unet")

    def build(config):
        model = spec.build(config)

        def forward(*args, **kwargs):
            raise exc
        model.forward = forward
        return model

    return dataclasses.replace(spec, build=build)


@pytest.mark.parametrize("exc, what", [(SystemExit(2), "called sys.exit(2)"),
                                       (ValueError("shapes do not match"), "ValueError: shapes do not match")])
def test_run_model_forward_faults_name_the_model_and_cell(exc, what, monkeypatch, ckpt_dir, data_root, cache_dir,
                                                          tmp_path):
    monkeypatch.setitem(get_registry().models, "unet", forward_fails(exc))
    before = digest(ckpt_dir, data_root)
    out = tmp_path / "run"
    code, output = invoke(["run", "--models", "unet", "--perturbations", "gaussian_noise", "--levels", "1",
                           "--checkpoints", ckpt_dir, "--out", out, "--data-root", data_root, "--cache-dir", cache_dir,
                           "--precision", "fp32", "--device", "cpu", "--no-report"])
    assert code == 1, output
    line = one_error_line(output)
    assert line.startswith("Error: model unet failed") and "cell" in line and line.endswith(what), line
    assert digest(ckpt_dir, data_root) == before
    assert not list(out.rglob("*.parquet")) and '"finished"' not in (out / RUN_FILE).read_text()


# --- evaluate: metric plugins and model forward ---------------------------------------------------


EVAL_CASES = {
    "metric raising": (metric_raises, "metric bad_metric failed: ZeroDivisionError: division by zero"),
    "metric sys.exit(0)": (metric_exits, "metric bad_metric failed: called sys.exit(0)"),
    "metric returning None": (answers(None), "metric bad_metric returned None, not numbers"),
    "metric returning text": (answers("0.93"), "metric bad_metric returned str of <U4, not numbers"),
    "metric returning objects": (answers([None, 0.5]), "metric bad_metric returned list of object, not numbers"),
    "metric returning one number for many images": (answers(0.5), "metric bad_metric returned shape () for matrices"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_evaluate_metric_faults_are_one_line(case, monkeypatch, ckpt_dir, data_root, cache_dir, tmp_path):
    fn, expected = EVAL_CASES[case]
    monkeypatch.setitem(get_registry().metrics, "bad_metric", MetricSpec("bad_metric", fn, per_class=False))
    before = digest(ckpt_dir, data_root)
    out = tmp_path / "eval.json"
    code, output = invoke(["evaluate", ckpt_dir / "unet" / "best.pt", "--data-root", data_root, "--cache-dir",
                           cache_dir, "--bootstrap", "10", "--precision", "fp32", "--device", "cpu", "--out", out])
    assert code == 1, output
    line = one_error_line(output)
    assert expected in line, line
    assert digest(ckpt_dir, data_root) == before
    assert not out.exists() and list(tmp_path.iterdir()) == []




def test_evaluate_model_forward_fault_is_one_line(monkeypatch, ckpt_dir, data_root, cache_dir, tmp_path):
    monkeypatch.setitem(get_registry().models, "unet", forward_fails(SystemExit(0)))
    before = digest(ckpt_dir, data_root)
    out = tmp_path / "eval.json"
    code, output = invoke(["evaluate", ckpt_dir / "unet" / "best.pt", "--data-root", data_root, "--cache-dir",
                           cache_dir, "--bootstrap", "0", "--precision", "fp32", "--device", "cpu", "--out", out])
    assert code == 1, output
    line = one_error_line(output)
    assert line.startswith("Error: model unet failed evaluating") and line.endswith("called sys.exit(0)"), line
    assert digest(ckpt_dir, data_root) == before and not out.exists()


def test_good_metrics_still_give_the_same_figures(monkeypatch, ckpt_dir, data_root, cache_dir, tmp_path):
    """A well-behaved metric plugin (integer scores, NaN for an absent class) passes."""
    from petseg_bench.metrics import iou

    monkeypatch.setitem(get_registry().metrics, "counts",
                        MetricSpec("counts", lambda cm: np.asarray(cm).sum((-2, -1)), per_class=False))
    monkeypatch.setitem(get_registry().metrics, "iou_again", MetricSpec("iou_again", iou, per_class=True))
    out = tmp_path / "eval.json"
    code, output = invoke(["evaluate", ckpt_dir / "unet" / "best.pt", "--data-root", data_root, "--cache-dir",
                           cache_dir, "--bootstrap", "10", "--precision", "fp32", "--device", "cpu", "--out", out])
    assert code == 0, output
    import json

    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["dataset"]["iou_again"] == metrics["dataset"]["iou"]
    assert metrics["seed"]["counts"]["mean"] > 0


# --- train: model build and forward ----------------------------------------------------------------


def build_exits(config):
    sys.exit(0)


@pytest.mark.parametrize("change, expected", [
    ("forward sys.exit", "model unet failed training at epoch 1 step 1: called sys.exit(0)"),
    ("forward raising", "model unet failed training at epoch 1 step 1: KeyError: 'image'"),
    ("build sys.exit", "model unet failed to build: called sys.exit(0)"),
])
def test_train_model_faults_are_one_line(change, expected, monkeypatch, data_root, cache_dir, tmp_path):
    spec = get_registry().get("model", "unet")
    if change == "build sys.exit":
        bad = dataclasses.replace(spec, build=build_exits)
    else:
        bad = forward_fails(SystemExit(0) if "exit" in change else KeyError("image"))
    monkeypatch.setitem(get_registry().models, "unet", bad)
    before = digest(data_root)
    out = tmp_path / "ck"
    code, output = invoke(["train", "unet", "--profile", "quick", "--epochs", "1", "--batch-size", "4", "--in-size", "32",
                           "--model-opt", "base_channels=4", "--workers", "0", "--device", "cpu", "--precision", "fp32",
                           "--data-root", data_root, "--cache-dir", cache_dir, "--out", out])
    assert code == 1, output
    line = one_error_line(output)
    assert line == f"Error: {expected}", line
    assert digest(data_root) == before
    assert not list(out.rglob("*.pt")), list(out.rglob("*"))


# --- the wrapper itself -------------------------------------------------------------------------


def test_plugin_code_turns_any_failure_into_one_line_but_ctrl_c_passes():
    with pytest.raises(PluginError, match=r"^metric m failed: called sys.exit\(None\)$"):
        with plugin_code("metric m failed"):
            sys.exit()
    with pytest.raises(PluginError, match=r"^thing: OSError: disk$"):
        with plugin_code("thing"):
            raise OSError("disk")
    with pytest.raises(KeyboardInterrupt):
        with plugin_code("thing"):
            raise KeyboardInterrupt
    with pytest.raises(PluginError, match="^its own line$"):  # a plugin's own PetsegError passes as it is
        with plugin_code("thing"):
            raise PluginError("its own line")
