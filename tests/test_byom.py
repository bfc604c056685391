"""Bring your own model: the onnx:, torchscript: and smp: model families, and export.

A tiny U-Net trained for one epoch on the synthetic pets is exported to ONNX and
TorchScript; the files run through the same engine as the checkpoint (``onnx:FILE``,
``torchscript:FILE``) and must agree with it. Hand-made ONNX files test the refusals
(wrong output, wrong input), a fixed batch size and the metadata rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from petseg_bench.cli import main
from petseg_bench.config import TrainConfig
from petseg_bench.data.cache import prepare
from petseg_bench.engine.inference import clean_batches, inference_on_dataset
from petseg_bench.engine.predictor import load_predictor
from petseg_bench.engine.runtime import Runtime
from petseg_bench.errors import PetsegError
from petseg_bench.families import model_dirname, model_from_dirname, split_model_key
from petseg_bench.metrics import dice, reduce
from petseg_bench.plugins import get_registry
from petseg_bench.specs import MetricSpec

from conftest import one_error_line, quiet, train, write_dataset

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FP32 = Runtime.choose("cpu", "fp32")
DICE = MetricSpec("dice", dice, per_class=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=6, n_dog=6, size=(40, 56))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, data_root, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("ckpts")
    cfg = TrainConfig(epochs=1, batch_size=4, workers=0, precision="fp32", device="cpu", seed=3, val_fraction=0.25,
                      lr=1e-3, patience=0)
    train("unet", cfg, dict(in_size=32, base_channels=4), data_root, out, cache_dir=cache_dir, log=quiet)
    return out


@pytest.fixture(scope="module")
def exported(ckpt_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    files = {}
    for fmt in ("onnx", "torchscript"):
        path = out / f"unet.{fmt}"
        res = CliRunner().invoke(main, ["export", str(ckpt_dir / "unet" / "best.pt"), "--format", fmt, "--out", str(path)])
        assert res.exit_code == 0, res.output
        assert "exported:" in res.output and path.is_file()
        files[fmt] = path
    return files


def test_family_keys_and_folder_names():
    assert split_model_key("onnx:a/b.onnx") == ("onnx", "a/b.onnx")
    assert split_model_key("unet") is None and split_model_key("C:/x") is None
    assert model_dirname("unet") == "unet"
    assert model_dirname("smp:Unet:resnet18") == "smp+Unet+resnet18"
    assert model_dirname("onnx:a/b c+%.onnx") == "onnx+a%2Fb%20c%2B%25.onnx"
    for key in ("unet", "smp:Unet:resnet18", "onnx:a/b c+%.onnx", "onnx:ü.onnx"):
        assert model_from_dirname(model_dirname(key)) == key
    reg = get_registry()
    assert {"onnx", "torchscript", "smp"} <= set(reg.families)
    assert all(reg.origins[("model family", n)] == n for n in ("onnx", "torchscript", "smp"))  # via entry points


@pytest.mark.parametrize("key, words", [
    ("nosuch:thing", ["no model family 'nosuch'", "onnx"]),
    ("onnx:/nonexistent/m.onnx", ["onnx:/nonexistent/m.onnx", "no such file"]),
    ("smp:unet:resnet18", ["did you mean smp:Unet:resnet18"]),
    ("smp:Unet:notanencoder", ["no smp encoder 'notanencoder'"]),
    ("smp:Unet", ["smp:ARCH:ENCODER"]),
])
def test_bad_keys_are_one_line(key, words):
    with pytest.raises(PetsegError) as info:
        get_registry().get("model", key)
    text = str(info.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_list_shows_the_families():
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 0 and "model families:" in res.output
    assert "smp:Unet:resnet18" in res.output and "onnx:model.onnx" in res.output


def test_metadata_is_written(exported):
    meta = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert meta["petseg.in_size"] == "32" and meta["petseg.classes"] == "background,cat,dog"
    assert meta["petseg.mean"] == "0.485,0.456,0.406" and meta["petseg.channel_order"] == "RGB"
    assert meta["petseg.model"] == "unet" and meta["petseg.inputs"] == "image"
    extra = {"petseg.json": ""}
    torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    assert json.loads(extra["petseg.json"])["in_size"] == "32"


def masks_of(pr, split, n=12):
    return pr.predict([split.image(i) for i in range(n)])


def test_round_trip_masks_and_dice_agree(exported, ckpt_dir, data_root, cache_dir):
    split = prepare(data_root, "test", "nearest", cache_dir)
    torch_pr = load_predictor(ckpt_dir / "unet" / "best.pt", FP32)
    file_prs = {fmt: load_predictor(p, FP32) for fmt, p in exported.items()}  # by path, as `evaluate FILE` does
    want = masks_of(torch_pr, split)
    for fmt, pr in file_prs.items():
        assert pr.spec.name == f"{fmt}:{exported[fmt]}" and pr.config.in_size == 32
        got = masks_of(pr, split)
        same = sum(int((a == b).sum()) for a, b in zip(want, got)) / sum(a.size for a in want)
        assert same >= 0.999, (fmt, same)
    positions = list(range(len(split)))
    preds = {"torch": torch_pr, **file_prs}
    cms = inference_on_dataset(preds, clean_batches(split, positions, preds, 5))
    dices = {k: float(np.nanmean(reduce(DICE, v, "dataset"))) for k, v in cms.items()}
    for fmt in file_prs:
        assert abs(dices[fmt] - dices["torch"]) <= 0.001, dices


def test_sweep_with_files_and_checkpoint_gives_matching_cells(exported, ckpt_dir, data_root, cache_dir, tmp_path):
    models = f"unet,onnx:{exported['onnx']},torchscript:{exported['torchscript']}"
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--models", models, "--perturbations", "brightness_increase", "--levels", "1",
                                    "--checkpoints", str(ckpt_dir), "--out", str(out), "--data-root", str(data_root),
                                    "--cache-dir", str(cache_dir), "--precision", "fp32", "--device", "cpu",
                                    "--no-report"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoints"][f"onnx:{exported['onnx']}"]  # the file's sha256 in the checkpoint's place
    from petseg_bench.results import load_run, matrices

    cells = load_run(out)
    assert set(cells.model) == set(models.split(","))
    for (pert, level), group in cells.groupby(["perturbation", "level"]):
        by = {m: group[group.model == m].sort_values("image_id") for m in models.split(",")}
        want = matrices(by["unet"])
        want_dice = float(np.nanmean(reduce(DICE, want, "dataset")))
        for m, df in by.items():
            got = matrices(df)
            agree = np.trace(np.minimum(got, want), axis1=1, axis2=2).sum() / want.sum()  # pixels right in both
            assert abs(float(np.nanmean(reduce(DICE, got, "dataset"))) - want_dice) <= 0.001, (m, pert, level)
            assert np.abs(got - want).sum() <= 0.002 * want.sum(), (m, pert, level, agree)


def _save_onnx(module: nn.Module, path: Path, shape=(1, 3, 32, 32), dynamic=True, meta=None) -> Path:
    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic else None, dynamo=False,
                          opset_version=17)
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in (meta or {}).items():
        proto.metadata_props.add(key=f"petseg.{k}", value=v)
    path.write_bytes(proto.SerializeToString())
    return path


FULL_META = {"in_size": "32", "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5", "classes": "background,cat,dog"}


class Fixed(nn.Module):
    """Logits that say 'cat' (class 1) everywhere: a file whose class order can be told."""

    def forward(self, x):
        y = torch.zeros(x.shape[0], 3, x.shape[2], x.shape[3]) + x[:, :1] * 0
        y[:, 1] = 1.0
        return y


@pytest.mark.parametrize("module, shape, words", [
    (nn.Conv2d(3, 2, 1), (1, 3, 32, 32), ["output", "not (N, 3, H, W) class logits", "refused"]),
    (nn.Flatten(), (1, 3, 32, 32), ["output", "refused"]),
    (nn.Linear(8, 3), (1, 8), ["input", "not a float (N, 3, H, W) image", "refused"]),
])
def test_bad_files_are_refused_in_one_line(module, shape, words, tmp_path):
    path = _save_onnx(module, tmp_path / "bad.onnx", shape, meta=FULL_META)
    with pytest.raises(PetsegError) as info:
        get_registry().get("model", f"onnx:{path}")
    text = str(info.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_missing_metadata_names_what_is_missing_and_tagging_fixes_it(tmp_path, data_root, cache_dir):
    path = _save_onnx(nn.Conv2d(3, 3, 1), tmp_path / "bare.onnx")
    res = CliRunner().invoke(main, ["evaluate", str(path), "--data-root", str(data_root), "--cache-dir", str(cache_dir),
                                    "--bootstrap", "0", "--device", "cpu", "--precision", "fp32",
                                    "--out", str(tmp_path / "e.json")])
    line = one_error_line(res.output)
    assert "does not say its mean, std, classes" in line and "--format onnx" in line, line  # in_size: the file's shape
    tagged = tmp_path / "tagged.onnx"
    res = CliRunner().invoke(main, ["export", str(path), "--format", "onnx", "--out", str(tagged),
                                    *sum((["--model-opt", f"{k}={v}"] for k, v in FULL_META.items()), [])])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["evaluate", str(tagged), "--data-root", str(data_root), "--cache-dir",
                                    str(cache_dir), "--bootstrap", "0", "--device", "cpu", "--precision", "fp32",
                                    "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output


def test_class_order_channel_order_and_fixed_batch(tmp_path, data_root, cache_dir):
    split = prepare(data_root, "test", "nearest", cache_dir)
    images = [split.image(i) for i in range(5)]
    meta = {**FULL_META, "classes": "background,dog,cat"}  # the file's channel 1 is 'dog'
    path = _save_onnx(Fixed(), tmp_path / "fixed.onnx", (2, 3, 32, 32), dynamic=False, meta=meta)
    pr = load_predictor(path, FP32)
    masks = pr.predict(images)  # 5 images through a file that takes exactly 2: padded
    assert len(masks) == 5 and all(np.all(m == 2) for m in masks)


def test_model_files_cannot_be_trained(exported, data_root, tmp_path):
    res = CliRunner().invoke(main, ["train", f"onnx:{exported['onnx']}", "--data-root", str(data_root),
                                    "--out", str(tmp_path)])
    assert "evaluation-only" in one_error_line(res.output)


def test_export_failure_is_one_line(ckpt_dir, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("Unsupported: an op the exporter does not know\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", broken)
    res = CliRunner().invoke(main, ["export", str(ckpt_dir / "unet" / "best.pt"), "--format", "onnx",
                                    "--out", str(tmp_path / "x.onnx")])
    line = one_error_line(res.output)
    assert "unet cannot be exported to onnx: RuntimeError: Unsupported" in line
    assert not (tmp_path / "x.onnx").exists()


def test_export_failure_keeps_the_exporters_own_log_out(ckpt_dir, tmp_path, monkeypatch, capfd):
    """torch's exporter logs its whole graph from C++ (file descriptor 2) before it raises."""
    import os

    def noisy(*a, **k):
        os.write(2, b"Torch IR graph at exception: graph(%image : Float(*, 3, 96, 96)) ...\n")
        os.write(1, b"%5040 : Float(1, 3, 1, 1) = prim::Constant\n")
        raise RuntimeError("Exporting the operator 'aten::_upsample_bicubic2d_aa' is not supported")

    monkeypatch.setattr(torch.onnx, "export", noisy)
    res = CliRunner().invoke(main, ["export", str(ckpt_dir / "unet" / "best.pt"), "--format", "onnx",
                                    "--out", str(tmp_path / "x.onnx")])
    assert "_upsample_bicubic2d_aa" in one_error_line(res.output)
    leaked = capfd.readouterr()
    assert "Torch IR graph" not in leaked.err and "prim::Constant" not in leaked.out


# --------------------------------------------------------------------------- smp


smp = pytest.importorskip("segmentation_models_pytorch")


def test_smp_model_builds_runs_and_loads_local_encoder_weights(tmp_path):
    spec = get_registry().get("model", "smp:FPN:resnet18")
    assert spec.name == "smp:FPN:resnet18" and "FPN" in spec.display
    cfg = spec.config({"in_size": 64})
    torch.manual_seed(0)
    model = spec.build(cfg).eval()
    with torch.no_grad():
        out = model(image=torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    weights = tmp_path / "enc.pth"
    torch.save({f"encoder.{k}": v for k, v in model.net.encoder.state_dict().items()}, weights)
    cfg2 = spec.config({"in_size": 64}, {"encoder_weights": str(weights)})
    other = spec.build(cfg2)
    for k, v in model.net.encoder.state_dict().items():
        assert torch.equal(other.net.encoder.state_dict()[k], v)
    assert "weights from enc.pth" in spec.encoder_name(cfg2)


@pytest.mark.parametrize("value, words", [
    ("/nonexistent/enc.pth", ["encoder weights file /nonexistent/enc.pth not found", "nothing is downloaded"]),
    ("imagenet", ["downloaded at run time", "encoder_weights=/path/to/resnet18.pth"]),
])
def test_smp_encoder_weights_errors_name_the_file(value, words):
    spec = get_registry().get("model", "smp:Unet:resnet18")
    with pytest.raises(PetsegError) as info:
        from petseg_bench.engine.predictor import build_model

        build_model(spec, spec.config({"in_size": 64}, {"encoder_weights": value}), FP32)
    text = str(info.value)
    assert "\n" not in text and all(w in text for w in words), text


@pytest.mark.slow
def test_smp_trains_into_a_safe_folder_and_joins_a_sweep(data_root, cache_dir, ckpt_dir, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, workers=0, precision="fp32", device="cpu", seed=3, val_fraction=0.25,
                      lr=1e-3, patience=0)
    key = "smp:Unet:mobilenet_v2"
    result = train(key, cfg, dict(in_size=32), data_root, ckpt_dir, cache_dir=cache_dir, log=quiet)
    assert result.best_path == ckpt_dir / "smp+Unet+mobilenet_v2" / "best.pt"
    assert torch.load(result.best_path, weights_only=True)["model"] == key
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--models", f"unet,{key}", "--perturbations", "brightness_increase",
                                    "--levels", "1", "--checkpoints", str(ckpt_dir), "--out", str(out),
                                    "--data-root", str(data_root), "--cache-dir", str(cache_dir),
                                    "--precision", "fp32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert key in (out / "report.md").read_text()
