"""The one training loop, checkpoints, inference, ``evaluate``, losses and model inputs.

Everything runs on a tiny synthetic dataset (12 trainval + 12 test images of 40x56 px,
a rectangle pet, cats and dogs, official layout) with tiny models (32 px input, 4 base
channels, the tiny random-init CLIP), on the CPU in fp32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from petseg_bench.cli import main
from petseg_bench.config import TrainConfig
from petseg_bench.data.cache import prepare
from petseg_bench.data.points import eval_click, train_click
from petseg_bench.data.split import validation_split
from petseg_bench.engine import checkpoint
from petseg_bench.engine import hooks as hooks_mod
from petseg_bench.engine import train_loop as loop_mod
from petseg_bench.engine import training as training_mod
from petseg_bench.engine.inference import clean_batches, inference_on_dataset
from petseg_bench.engine.losses import segmentation_loss, soft_dice_loss
from petseg_bench.engine.predictor import Predictor, load_predictor
from petseg_bench.engine.runtime import Runtime
from petseg_bench.errors import PetsegError
from petseg_bench.metrics import iou, mean_over_classes, reduce
from petseg_bench.specs import MetricSpec
from petseg_bench_models.blocks import click_heatmaps as heatmaps

from conftest import one_error_line, quiet, train, write_dataset

MODELS = ("unet", "autoencoder", "clip_only", "clip_unet", "point_clip_unet")
CLIP_MODELS = ("clip_only", "clip_unet", "point_clip_unet")
TINY = dict(in_size=32, base_channels=4, latent_dim=16, backbone="clip:petseg-tiny-vit:none")
SIZE = (40, 56)  # (height, width) of the synthetic images: not square, so restoring the size is tested
ROW_FIELDS = {"epoch", "phase", "train_loss", "lr", "seconds", "images_per_s"}
VAL_FIELDS = {"val_miou", "val_mdice", "val_miou_seed"}
IOU = MetricSpec("iou", iou, per_class=True)
CKPT_FIELDS = {"format", "format_version", "model", "model_config", "train_config", "data_fingerprint",
               "code_version", "runtime", "n_train", "n_val", "state_dict"}


def load_model(path, runtime=None, expect_model=None):
    """(spec, config, model, checkpoint info) through the one loader (BN left unfolded, as in training)."""
    pr = load_predictor(path, runtime or Runtime.choose("cpu", "fp32"), expect_model, fold_bn=False)
    return pr.spec, pr.config, pr.model, pr.info


def confusion_over(predictor, split, positions, batch_size):
    return inference_on_dataset({"m": predictor}, clean_batches(split, positions, {"m": predictor}, batch_size))["m"]


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, workers=0, precision="fp32", device="cpu", seed=3, val_fraction=0.25,
                lr=1e-3, patience=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=6, n_dog=6, size=SIZE)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root, cache_dir) -> dict:
    """Every built-in model trained for two epochs: {name: TrainResult}."""
    out = tmp_path_factory.mktemp("runs")
    return {name: train(name, tiny_cfg(), TINY, data_root, out, cache_dir=cache_dir, log=quiet) for name in MODELS}


# --------------------------------------------------------------------------- training every model


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_writes_checkpoints_and_predicts(name, trained, data_root, cache_dir):
    result = trained[name]
    run_dir = result.best_path.parent
    assert result.best_path == run_dir / "best.pt" and result.last_path == run_dir / "last.pt"
    assert result.best_path.is_file() and result.last_path.is_file()
    assert result.epochs_run == 2 and 0.0 <= result.best_val_miou <= 1.0
    assert 0.0 < result.baseline_val_miou < 1.0 and result.images_per_s > 0

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert ROW_FIELDS <= set(row), row
        assert math.isfinite(row["train_loss"]) and row["lr"] > 0
        if row["phase"] == "segment":
            assert VAL_FIELDS <= set(row) and all(0.0 <= row[k] <= 1.0 for k in VAL_FIELDS)
        else:
            assert not VAL_FIELDS & set(row)
    if name == "autoencoder":
        assert [r["phase"] for r in rows] == ["reconstruct", "segment"]
    else:
        assert {r["phase"] for r in rows} == {"segment"}
    assert result.history == rows

    best = checkpoint.load(result.best_path, expect_model=name)
    assert CKPT_FIELDS <= set(best)
    assert best["model"] == name and best["epoch"] in (1, 2)
    assert set(best["val"]) == VAL_FIELDS
    assert best["val"]["val_miou"] == pytest.approx(result.best_val_miou, abs=1e-6)
    last = checkpoint.load(result.last_path, expect_model=name)
    assert last["loop"]["epoch"] == 2 and last["loop"]["done"] is True
    assert {"optimizer", "scheduler", "rng"} <= set(last)

    spec, config, model, data = load_model(result.best_path, Runtime.choose("cpu", "fp32"), expect_model=name)
    assert config.in_size == 32 and config.opt("base_channels") == 4 and not model.training
    test = prepare(data_root, "test", "nearest", cache_dir)
    images = [np.asarray(Image.open(data_root / "images" / f"{n}.jpg").convert("RGB")) for n in test.names[:3]]
    labels = [test.label(i) for i in range(3)]
    preds = Predictor(model, spec, config, Runtime.choose("cpu", "fp32")).predict(images, labels)
    assert len(preds) == 3
    for p in preds:
        assert p.shape == SIZE and p.dtype == np.uint8 and set(np.unique(p)) <= {0, 1, 2}


@pytest.mark.parametrize("name", ["unet", "point_clip_unet"])
def test_recorded_validation_miou_is_reproducible_from_best(name, tmp_path, data_root, cache_dir):
    """The validation mIoU stored with best.pt is what the saved weights give in eval mode
    (validation must not run in train mode: batch-norm batch statistics, dropout)."""
    result = train(name, tiny_cfg(epochs=2), {**TINY, "dropout": 0.2}, data_root, tmp_path, cache_dir=cache_dir, log=quiet)
    spec, config, model, data = load_model(result.best_path, Runtime.choose("cpu", "fp32"))
    prepared = prepare(data_root, "trainval", "nearest", cache_dir)
    _, val_pos = validation_split(prepared.species, 0.25, 3)
    cms = confusion_over(Predictor(model, spec, config, Runtime.choose("cpu", "fp32")), prepared, val_pos, 4)
    assert mean_over_classes(reduce(IOU, cms, "dataset")) == pytest.approx(data["val"]["val_miou"], abs=1e-6)
    assert mean_over_classes(reduce(IOU, cms, "seed")) == pytest.approx(data["val"]["val_miou_seed"], abs=1e-6)


def test_limit_and_val_limit_pick_fixed_subsets(tmp_path, data_root, cache_dir):
    # 12 trainval images, val fraction 0.25 -> 4 validation (2 per species), 8 training.
    full = train("unet", tiny_cfg(epochs=1), TINY, data_root, tmp_path / "a", cache_dir=cache_dir, log=quiet)
    meta = checkpoint.load(full.last_path)
    assert (meta["n_train"], meta["n_val"]) == (8, 4)
    small = train("unet", tiny_cfg(epochs=1, limit=3, val_limit=2), TINY, data_root, tmp_path / "b",
                  cache_dir=cache_dir, log=quiet)
    meta = checkpoint.load(small.last_path)
    assert (meta["n_train"], meta["n_val"]) == (3, 2)
    assert meta["train_config"]["limit"] == 3 and meta["train_config"]["val_limit"] == 2
    # A limit above the split's size keeps everything.
    big = train("unet", tiny_cfg(epochs=1, limit=100, val_limit=100), TINY, data_root, tmp_path / "c",
                cache_dir=cache_dir, log=quiet)
    meta = checkpoint.load(big.last_path)
    assert (meta["n_train"], meta["n_val"]) == (8, 4)
    for bad in (dict(limit=1), dict(val_limit=0)):
        with pytest.raises(PetsegError, match=f"--{next(iter(bad)).replace('_', '-')}"):
            tiny_cfg(**bad).validate()


def test_train_config_round_trips_and_validates():
    cfg = tiny_cfg(class_weights=(0.1, 1.0, 2.0), limit=5)
    d = cfg.to_dict()
    assert d["class_weights"] == [0.1, 1.0, 2.0] and json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict({**d, "unknown_key": 1}) == cfg
    defaults = TrainConfig()
    assert (defaults.lr, defaults.batch_size, defaults.epochs, defaults.optimizer) == (1e-4, 16, 100, "adamw")
    assert defaults.class_weights == (0.3, 2.2, 0.8) and defaults.val_fraction == 0.1
    for bad, option in ((dict(optimizer="lion"), "--optimizer"), (dict(batch_size=0), "--batch-size"),
                        (dict(class_weights=(1.0, -1.0, 1.0)), "--class-weights"), (dict(grad_clip=-1), "--grad-clip"),
                        (dict(workers=-1), "--workers"), (dict(scheduler="step"), "--scheduler")):
        with pytest.raises(PetsegError, match=option):
            tiny_cfg(**bad).validate()


def test_phase_epochs_split_the_budget():
    assert loop_mod.phase_epochs(10, [1.0]) == [10]
    assert loop_mod.phase_epochs(3, [0.5, 0.5]) == [1, 2]
    for total in range(2, 30):
        counts = loop_mod.phase_epochs(total, [0.5, 0.5])
        assert sum(counts) == total and min(counts) >= 1
    assert loop_mod.phase_epochs(1, [0.5, 0.5]) == [1, 1]  # each phase needs an epoch


def test_phase_epochs_set_each_stage(tmp_path, data_root, cache_dir):
    result = train("autoencoder", tiny_cfg(epochs=3, phase_epochs=(1, 2)), TINY, data_root, tmp_path,
                   cache_dir=cache_dir, log=quiet)
    assert [r["phase"] for r in result.history] == ["reconstruct", "segment", "segment"]
    with pytest.raises(PetsegError, match=r"--phase-epochs gives 2 numbers but unet has 1 training phase\(s\): segment"):
        train("unet", tiny_cfg(epochs=3, phase_epochs=(1, 2)), TINY, data_root, tmp_path / "u", cache_dir=cache_dir,
              log=quiet)


def test_phase_epochs_resolve_and_validate():
    from petseg_bench.config import resolve
    from petseg_bench.plugins import get_registry

    spec = get_registry().get("model", "autoencoder")
    cfg, _ = resolve("quick", {"phase_epochs": (2, 5)}, {}, spec)
    assert cfg.epochs == 7 and cfg.phase_epochs == (2, 5)  # the split sets the total
    cfg, _ = resolve("quick", {"epochs": 4}, {}, spec)
    assert cfg.epochs == 4 and cfg.phase_epochs is None  # an explicit total alone: the model's fractions
    with pytest.raises(PetsegError, match=r"--phase-epochs sum to 7 epochs but --epochs is 4"):
        resolve("quick", {"epochs": 4, "phase_epochs": (2, 5)}, {}, spec)
    with pytest.raises(PetsegError, match=r"--phase-epochs needs whole numbers >= 1"):
        resolve("quick", {"phase_epochs": (0, 5)}, {}, spec)
    assert TrainConfig.from_dict(TrainConfig(epochs=3, phase_epochs=(1, 2)).to_dict()).phase_epochs == (1, 2)


def test_autoencoder_with_one_epoch_says_it_runs_two(tmp_path, data_root, cache_dir):
    messages = []
    result = train("autoencoder", tiny_cfg(epochs=1), TINY, data_root, tmp_path, cache_dir=cache_dir, log=messages.append)
    assert result.epochs_run == 2 and [r["phase"] for r in result.history] == ["reconstruct", "segment"]
    assert any("running 2 epochs, not 1" in m for m in messages)
    assert any("epoch 2/2 [segment]" in m for m in messages), messages


def test_early_stopping_on_validation_miou(tmp_path, data_root, cache_dir, monkeypatch):
    monkeypatch.setattr(hooks_mod, "mean_over_classes", lambda values: 0.5)  # never improves after epoch 1
    messages = []
    result = train("unet", tiny_cfg(epochs=10, patience=2), TINY, data_root, tmp_path, cache_dir=cache_dir,
                   log=messages.append)
    assert result.epochs_run == 3 and len(result.history) == 3
    assert checkpoint.load(result.best_path)["epoch"] == 1
    assert checkpoint.load(result.last_path)["loop"]["done"] is True
    assert any("early stop" in m for m in messages)


# --------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def _stop_after(epoch_to_stop: int):
    def hook(epoch: int) -> None:
        if epoch == epoch_to_stop:
            raise Interrupt(f"stopped after epoch {epoch}")
    return hook


@pytest.mark.parametrize("name,overrides", [("unet", dict(dropout=0.1)), ("autoencoder", {})])
def test_resume_is_exact(name, overrides, tmp_path, data_root, cache_dir):
    cfg = tiny_cfg(epochs=3, restart_epochs=2)
    model_over = {**TINY, **overrides}
    whole = train(name, cfg, model_over, data_root, tmp_path / "whole", cache_dir=cache_dir, log=quiet)

    out = tmp_path / "broken"
    with pytest.raises(Interrupt):
        train(name, cfg, model_over, data_root, out, cache_dir=cache_dir, log=quiet, on_epoch_end=_stop_after(1))
    assert checkpoint.load(out / name / "last.pt")["loop"]["epoch"] == 1
    messages, epochs = [], []
    resumed = train(name, cfg, model_over, data_root, out, resume=True, cache_dir=cache_dir, log=messages.append,
                    on_epoch_end=epochs.append)
    assert any("resuming after epoch 1" in m for m in messages)
    assert epochs == [2, 3]  # only the missing epochs ran
    assert resumed.epochs_run == 3

    a = checkpoint.load(whole.last_path)["state_dict"]
    b = checkpoint.load(resumed.last_path)["state_dict"]
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"resumed weights differ from the uninterrupted run: {unequal[:5]}"
    rows_whole = (whole.last_path.parent / "metrics.jsonl").read_text().splitlines()
    rows_resumed = (out / name / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in ("seconds", "images_per_s")} for r in rows]  # noqa: E731
    assert strip(rows_resumed) == strip(rows_whole)

    # Resuming a finished run does nothing and keeps the result.
    again = train(name, cfg, model_over, data_root, out, resume=True, cache_dir=cache_dir, log=quiet)
    assert again.epochs_run == 3


def test_resume_with_other_settings_is_refused(tmp_path, data_root, cache_dir):
    out = tmp_path / "runs"
    train("unet", tiny_cfg(epochs=1), TINY, data_root, out, cache_dir=cache_dir, log=quiet)
    with pytest.raises(PetsegError) as info:
        train("unet", tiny_cfg(epochs=1, lr=5e-3), TINY, data_root, out, resume=True, cache_dir=cache_dir, log=quiet)
    message = str(info.value)
    assert "\n" not in message and "lr" in message and "0.001" in message and "0.005" in message
    with pytest.raises(PetsegError, match="base_channels"):
        train("unet", tiny_cfg(epochs=1), {**TINY, "base_channels": 8}, data_root, out, resume=True,
              cache_dir=cache_dir, log=quiet)


# --------------------------------------------------------------------------- bad input


def test_unknown_model_is_one_line(tmp_path, data_root, cache_dir):
    with pytest.raises(PetsegError) as info:
        train("no_such_model", tiny_cfg(), TINY, data_root, tmp_path, cache_dir=cache_dir, log=quiet)
    assert "no_such_model" in str(info.value) and "unet" in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_of_another_model_is_refused(trained):
    with pytest.raises(PetsegError) as info:
        load_model(trained["unet"].best_path, expect_model="clip_unet")
    assert "'unet'" in str(info.value) and "'clip_unet'" in str(info.value) and "\n" not in str(info.value)


def test_truncated_and_corrupt_checkpoints(trained, tmp_path):
    raw = trained["unet"].best_path.read_bytes()
    cases = {
        "truncated.pt": raw[: len(raw) // 2],
        "cut_end.pt": raw[:-10],
        "random.pt": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.pt": b"",
        "text.pt": b"hello, not a checkpoint\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(PetsegError) as info:
            load_model(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (name, message)
    with pytest.raises(PetsegError, match="not found"):
        load_model(tmp_path / "missing.pt")
    # A valid torch file that is not ours.
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(PetsegError, match="not a petseg-bench checkpoint"):
        load_model(tmp_path / "foreign.pt")


class _Trap:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_objects_runs_nothing(trained, tmp_path):
    marker = tmp_path / "marker"
    data = checkpoint.load(trained["unet"].best_path)
    path = tmp_path / "evil.pt"
    torch.save({**data, "extra": _Trap(str(marker))}, path)
    # The trap is real: an unsafe load would create the marker.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(PetsegError) as info:
        load_model(path)
    assert "pickled" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    result = CliRunner().invoke(main, ["evaluate", str(path), "--data-root", str(tmp_path)])
    assert result.exit_code != 0 and "pickled" in one_error_line(result.output)
    assert not marker.exists()


def test_nan_loss_stops_with_epoch_and_step(tmp_path, data_root, cache_dir, monkeypatch):
    real = loop_mod.segmentation_loss
    calls = {"epoch": 0}

    def on_epoch_end(epoch: int) -> None:
        calls["epoch"] = epoch

    def loss(logits, *args, **kwargs):
        value = real(logits, *args, **kwargs)
        return value * float("nan") if calls["epoch"] >= 1 else value

    monkeypatch.setattr(loop_mod, "segmentation_loss", loss)
    out = tmp_path / "runs"
    with pytest.raises(PetsegError) as info:
        train("unet", tiny_cfg(epochs=3), TINY, data_root, out, cache_dir=cache_dir, log=quiet, on_epoch_end=on_epoch_end)
    message = str(info.value)
    assert "nan" in message and "epoch 2" in message and "step 1" in message and "\n" not in message
    monkeypatch.undo()
    for name in ("best.pt", "last.pt"):
        data = checkpoint.load(out / "unet" / name)
        assert all(torch.isfinite(v).all() for v in data["state_dict"].values() if v.is_floating_point())
        load_model(out / "unet" / name)
    assert checkpoint.load(out / "unet" / "last.pt")["loop"]["epoch"] == 1


@pytest.mark.parametrize("args,option", [
    (["--lr", "-1"], "--lr"),
    (["--dropout", "1.5"], "dropout"),
    (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--class-weights", "1,2"], "--class-weights"),
    (["--in-size", "30"], "in_size"),
    (["--profile", "huge"], "--profile"),
])
def test_cli_train_rejects_out_of_range_options(args, option, tmp_path, data_root):
    result = CliRunner().invoke(main, ["train", "unet", "--data-root", str(data_root), "--out", str(tmp_path)] + args)
    assert result.exit_code != 0
    assert option in one_error_line(result.output)
    assert not (tmp_path / "unet").exists()


def test_cli_train_and_resume(tmp_path, data_root, cache_dir):
    args = ["train", "unet", "--profile", "quick", "--data-root", str(data_root), "--cache-dir", str(cache_dir),
            "--out", str(tmp_path), "--epochs", "1", "--in-size", "32", "--base-channels", "4", "--batch-size", "4",
            "--workers", "0", "--val-fraction", "0.25", "--precision", "fp32", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "best validation mIoU" in result.output and str(tmp_path / "unet" / "best.pt") in result.output
    data = checkpoint.load(tmp_path / "unet" / "best.pt")
    assert data["train_config"]["lr"] == 1e-3 and data["model_config"]["options"]["base_channels"] == 4  # profile + options
    result = CliRunner().invoke(main, args + ["--resume", "--lr", "0.01"])
    assert result.exit_code != 0 and "lr" in one_error_line(result.output)


def test_cli_train_unknown_model(tmp_path, data_root):
    result = CliRunner().invoke(main, ["train", "no_such_model", "--data-root", str(data_root), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "no_such_model" in one_error_line(result.output)


def test_failed_save_keeps_previous_checkpoint(trained, tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    good = checkpoint.load(trained["unet"].last_path)
    checkpoint.save(path, {k: v for k, v in good.items() if k not in ("format", "format_version")})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(PetsegError) as info:
        checkpoint.save(path, {"model": "unet", "state_dict": {}})
    assert str(info.value) == f"could not write checkpoint {path}: no space left on device; the previous one is kept"
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    load_model(path)


def test_failed_save_during_training_is_one_line(tmp_path, data_root, cache_dir, monkeypatch):
    real = checkpoint.torch.save
    state = {"epoch": 0}

    def save(obj, f, *args, **kwargs):
        if state["epoch"] >= 1:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half")
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    out = tmp_path / "runs"
    with pytest.raises(PetsegError) as info:
        train("unet", tiny_cfg(epochs=2), TINY, data_root, out, cache_dir=cache_dir, log=quiet,
              on_epoch_end=lambda e: state.update(epoch=e))
    assert "no space left on device" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    assert checkpoint.load(out / "unet" / "last.pt")["loop"]["epoch"] == 1
    load_model(out / "unet" / "best.pt")


# --------------------------------------------------------------------------- checkpoint safety and provenance


@pytest.mark.parametrize("name", MODELS)
def test_checkpoints_load_with_weights_only_and_record_provenance(name, trained, data_root, cache_dir):
    fingerprint = prepare(data_root, "trainval", "nearest", cache_dir).fingerprint
    for path in (trained[name].best_path, trained[name].last_path):
        data = torch.load(path, map_location="cpu", weights_only=True)
        assert data["model"] == name and data["data_fingerprint"] == fingerprint
        assert data["code_version"] and data["train_config"]["lr"] == 1e-3
        if name in CLIP_MODELS:
            assert data["model_config"]["options"]["backbone"] == "clip:petseg-tiny-vit:none"
            assert data["backbone"] == {"key": "clip:petseg-tiny-vit:none", "label": "CLIP petseg-tiny-vit (random init)",
                                        "random_init": True}
            assert not any(k.startswith(("clip.", "backbone.", "visual.")) for k in data["state_dict"])  # not ours
        else:
            assert data["backbone"] is None
        if name == "point_clip_unet":
            assert "deepest" in data["eval_click_rule"]


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("name", ["unet", "clip_unet"])
def test_evaluate_cli(name, trained, data_root, cache_dir, tmp_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, [
        "evaluate", str(trained[name].best_path), "--data-root", str(data_root), "--cache-dir", str(cache_dir),
        "--bootstrap", "20", "--batch-size", "4", "--device", "cpu", "--precision", "fp32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "dataset" in text and "seed" in text and str(out) in text
    data = json.loads(out.read_text())
    assert data["model"] == name and data["split"] == "test" and data["void"] == "nearest"
    m = data["metrics"]
    assert m["n_images"] == 12
    for reduction in ("dataset", "seed"):
        for metric in ("iou", "dice"):
            assert 0.0 <= m[reduction][metric]["mean"] <= 1.0
            assert set(m[reduction][metric]["per_class"]) == {"background", "cat", "dog"}
    assert 0.0 <= m["dataset"]["pixel_accuracy"]["mean"] <= 1.0
    groups = data["breeds"]["groups"]  # per breed and per group, from the same matrices
    assert sum(g["n_images"] for g in groups.values()) == 12 and "breeds (>= " in text
    if name in CLIP_MODELS:
        assert data["backbone"]["random_init"] is True
        assert "random init" in text and "random weights" in text
    else:
        assert data["backbone"] is None and "backbone" not in text


# --------------------------------------------------------------------------- losses


def _perfect_logits(target: torch.Tensor, n_classes: int = 3, scale: float = 50.0) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(target.clamp(max=n_classes - 1), n_classes).permute(0, 3, 1, 2).float()
    return onehot * scale


def test_soft_dice_loss_perfect_and_ignore():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    logits = _perfect_logits(target)
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    wrong = _perfect_logits((target + 1) % 3)
    assert soft_dice_loss(wrong, target).item() > 0.9

    # Ignored pixels: whatever the logits say there, the loss is unchanged.
    ignored = target.clone()
    ignored[:, :3] = 255
    noisy = logits.clone()
    noisy[:, :, :3] = torch.randn(2, 3, 3, 8, generator=g) * 100
    assert soft_dice_loss(noisy, ignored).item() == pytest.approx(0.0, abs=1e-5)
    a = soft_dice_loss(torch.randn(2, 3, 8, 8, generator=g), ignored)
    b_logits = torch.randn(2, 3, 8, 8, generator=g)
    c_logits = b_logits.clone()
    c_logits[:, :, :3] = -c_logits[:, :, :3]
    assert soft_dice_loss(b_logits, ignored).item() == pytest.approx(soft_dice_loss(c_logits, ignored).item(), abs=1e-6)
    assert math.isfinite(a.item())


def test_segmentation_loss_weights():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, 0] = 255
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    w = torch.tensor([0.3, 2.2, 0.8])
    dice_only = segmentation_loss(logits, target, w, ce=0.0, dice=1.0)
    assert dice_only.item() == pytest.approx(soft_dice_loss(logits, target).item(), abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=255)
    both = segmentation_loss(logits, target, w, ce=3.0, dice=0.3)
    assert both.item() == pytest.approx(3.0 * ce.item() + 0.3 * soft_dice_loss(logits, target).item(), abs=1e-5)
    both.backward()
    assert torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- model inputs


def test_heatmaps_are_gaussians_peaking_at_the_click():
    sigma = 3.0
    points = torch.tensor([[5, 7], [20, 2]])
    h = heatmaps(points, 24, sigma)
    assert h.shape == (2, 1, 24, 24)
    for b, (y, x) in enumerate(points.tolist()):
        assert h[b, 0, y, x].item() == pytest.approx(1.0)
        assert torch.argmax(h[b, 0]).item() == y * 24 + x
        yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
        expected = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2))
        torch.testing.assert_close(h[b, 0], expected)
    assert h[0, 0, 5 + 3, 7 + 4].item() == pytest.approx(math.exp(-25 / (2 * sigma ** 2)), rel=1e-5)


def _ring_label() -> np.ndarray:
    """A thick C-shaped pet whose centre of mass lies in the hole, off the object."""
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    label = ((r >= 12) & (r <= 20)).astype(np.uint8) * 2
    label[20:29, 24:] = 0  # the opening of the C
    return label


def test_eval_click_lies_on_a_ring_shaped_pet():
    label = _ring_label()
    cy, cx = (int(round(v)) for v in np.argwhere(label > 0).mean(0))
    assert label[cy, cx] == 0  # the seed's centre of mass misses the pet
    y, x = eval_click(label)
    assert label[y, x] == 2
    assert eval_click(label) == (y, x)
    # With void pixels (255) around, still on the pet; an empty mask gives the centre.
    with_void = label.copy()
    with_void[with_void == 0] = 255
    assert with_void[eval_click(with_void)] == 2
    assert eval_click(np.zeros((10, 12), np.uint8)) == (5, 6)


def test_train_click_is_on_the_pet_and_seeded():
    label = _ring_label()
    label[label == 2] = 1
    clicks = [train_click(label, np.random.default_rng(s)) for s in range(50)]
    assert all(label[y, x] == 1 for y, x in clicks)
    assert len(set(clicks)) > 10
    assert [train_click(label, np.random.default_rng(7)) for _ in range(3)] == [train_click(label, np.random.default_rng(7))] * 3


def test_wandb_without_the_package_is_one_clear_line(monkeypatch):
    import builtins

    from petseg_bench.engine.hooks import open_wandb_run

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(PetsegError, match="pip install wandb"):
        open_wandb_run("unet", {})
