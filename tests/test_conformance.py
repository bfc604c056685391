"""The plugin conformance kit (petseg_bench.testing): built-ins pass, planted breaks are caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from petseg_bench.cli import main
from petseg_bench.metrics import iou
from petseg_bench.plugins import get_registry
from petseg_bench.specs import MetricSpec, ModelSpec, PerturbationSpec
from petseg_bench.testing import (check_backbone_spec, check_metric_spec, check_model_spec, check_perturbation_spec,
                                  small_options)

# --------------------------------------------------------------------------- built-ins pass

REG = get_registry()


@pytest.mark.parametrize("name", sorted(REG.models))
def test_every_builtin_model_conforms(name):
    spec = REG.get("model", name)
    assert check_model_spec(spec, small_options(spec), sizes=(32,)) == []


@pytest.mark.parametrize("name", sorted(n for n, s in REG.perturbations.items() if not s.unavailable))
def test_every_builtin_perturbation_conforms(name):
    assert check_perturbation_spec(REG.get("perturbation", name), levels=[1]) == []


@pytest.mark.parametrize("name", sorted(REG.metrics))
def test_every_builtin_metric_conforms(name):
    assert check_metric_spec(REG.get("metric", name)) == []


def test_builtin_backbone_conforms():
    assert check_backbone_spec(REG.backbones["clip"], "petseg-tiny-vit:none") == []


# --------------------------------------------------------------------------- planted breaks


class Net(nn.Module):
    """A tiny conv net; ``mode`` plants one break."""

    def __init__(self, mode: str = "", classes: int = 3):
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, classes, 1)
        if mode == "bad_fold":  # names a pair whose conv output is used elsewhere too
            self.fold_pairs = (("conv", "bn"),)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, image, point=None):
        c = self.conv(image)
        x = torch.relu(self.bn(c))
        if self.mode == "bad_fold":
            x = x + c
        if self.mode == "autocast":
            assert x.dtype == torch.float32, "expects float32"
        if self.mode == "random":
            x = x + torch.rand_like(x)
        if self.mode == "batch":
            x = x - x.mean(0, keepdim=True)
        y = self.head(x)
        if self.mode == "half_size":
            y = y[..., ::2, ::2]
        if self.mode == "view":
            y = y.view(y.shape[0], -1).reshape(y.shape)
        return y


def model(mode="", classes=3, inputs=("image",)) -> ModelSpec:
    return ModelSpec(name="planted", build=lambda cfg: Net(mode, classes), inputs=inputs)


def pert(apply) -> PerturbationSpec:
    return PerturbationSpec(name="planted", param="x", levels=(0, 1), apply=apply)


def _global_rng(images, value, rngs):
    return [np.clip(im.astype(np.int16) + np.random.randint(-20, 20, im.shape), 0, 255).astype(np.uint8) for im in images]


def _float(images, value, rngs):
    return [im.astype(np.float32) / 255 for im in images]


def _shape(images, value, rngs):
    return [im[::2, ::2].copy() for im in images]


def _in_place(images, value, rngs):
    for im in images:
        im[0, 0] = 0
    return [im.copy() for im in images]


def _batch_dependent(images, value, rngs):
    shift = len(images)
    return [np.clip(im.astype(np.int16) + shift, 0, 255).astype(np.uint8) for im in images]


_counter = {"n": 0}


def _shared_state(images, value, rngs):
    out = []
    for im in images:
        _counter["n"] += 1  # state shared by every call: depends on the calls before
        out.append(np.clip(im.astype(np.int16) + _counter["n"] % 7, 0, 255).astype(np.uint8))
    return out


def _metric_flat(cm):
    cm = np.asarray(cm)
    return np.diag(cm.reshape(3, 3)) / cm.reshape(3, 3).sum(1)  # only [C, C]


PLANTED = [
    ("wrong classes", lambda: check_model_spec(model(classes=2), sizes=(32,)), "output shape"),
    ("ignores its click", lambda: check_model_spec(model(inputs=("image", "point")), sizes=(32,)), "click"),
    ("breaks under autocast", lambda: check_model_spec(model("autocast"), sizes=(32,)), "bf16 autocast"),
    ("non-deterministic", lambda: check_model_spec(model("random"), sizes=(32,)), "determinism"),
    ("mixes the batch", lambda: check_model_spec(model("batch"), sizes=(32,)), "batch independence"),
    ("wrong output size", lambda: check_model_spec(model("half_size"), sizes=(32,)), "output shape"),
    ("bad fold_pairs", lambda: check_model_spec(model("bad_fold"), sizes=(32,)), "BatchNorm folding"),
    ("view on NCHW strides", lambda: check_model_spec(model("view"), sizes=(32,)), "channels_last"),
    ("numpy global RNG", lambda: check_perturbation_spec(pert(_global_rng)), "global random state"),
    ("returns float", lambda: check_perturbation_spec(pert(_float)), "output dtype"),
    ("changes shape", lambda: check_perturbation_spec(pert(_shape)), "output shape"),
    ("writes into inputs", lambda: check_perturbation_spec(pert(_in_place)), "inputs untouched"),
    ("depends on the batch", lambda: check_perturbation_spec(pert(_batch_dependent)), "batch independence"),
    ("shared mutable state", lambda: check_perturbation_spec(pert(_shared_state)), "global random state"),
    ("metric without leading axes", lambda: check_metric_spec(MetricSpec("planted", _metric_flat, per_class=True)),
     "leading axes"),
]


@pytest.mark.parametrize("what, run, promise", PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_break_is_caught(what, run, promise):
    problems = run()
    assert problems, f"{what} was not caught"
    assert any(p.startswith(promise + ":") and "; fix: " in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_a_sound_model_and_perturbation_pass():
    assert check_model_spec(model(), sizes=(32, 64)) == []

    def sound(images, value, rngs):
        return [np.clip(im.astype(np.int16) + r.integers(-9, 9, im.shape), 0, 255).astype(np.uint8)
                for im, r in zip(images, rngs)]

    assert check_perturbation_spec(pert(sound)) == []
    assert check_metric_spec(MetricSpec("iou2", iou, per_class=True)) == []


def test_plugin_check_command():
    res = CliRunner().invoke(main, ["plugin", "check", "unet", "gaussian_noise", "iou"])
    assert res.exit_code == 0, res.output
    assert "ok    model unet" in res.output and "3 of 3 conform" in res.output
    res = CliRunner().invoke(main, ["plugin", "check", "no_such_thing"])
    assert res.exit_code != 0 and "no model, backbone, perturbation or metric" in res.output
