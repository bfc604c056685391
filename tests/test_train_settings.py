"""Training settings declared once (TrainConfig fields -> the ``train`` options), and the
training loop's contracts: hooks end in ``finally``, decisions are returned, and the
predictor leaves the module in the mode it found it in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import click
import pytest
import torch
from click.testing import CliRunner

from petseg_bench import cli as cli_mod
from petseg_bench import config as config_mod
from petseg_bench.cli import config_options, config_values, main
from petseg_bench.config import TrainConfig, cli_settings, setting
from petseg_bench.engine import hooks as hooks_mod
from petseg_bench.engine.predictor import Predictor
from petseg_bench.engine.runtime import Runtime
from petseg_bench.engine.train_loop import HookBase, TrainLoop, TrainState
from petseg_bench.errors import PetsegError
from petseg_bench.plugins import get_registry

#: A command-line text and the value it must arrive as, per kind of setting; list settings
#: (a ``parse`` of their own) name theirs below.
BY_KIND = {int: ("7", 7), float: ("0.25", 0.25), str: ("some-text", "some-text"), bool: (None, True)}
LISTS = {"class_weights": ("1,2.5,3", (1.0, 2.5, 3.0)), "phase_epochs": ("3,4", (3, 4))}


def example(s) -> tuple[str, object]:
    if s.parse is not None:
        assert s.name in LISTS, f"add a command-line example for the list setting {s.name}"
        return LISTS[s.name]
    if s.choices:
        return s.choices[-1], s.choices[-1]
    return BY_KIND[s.kind]


def test_every_train_config_field_is_a_train_option():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert [s.name for s in cli_settings()] == names  # each field declares its option
    params = {p.name: p for p in main.commands["train"].params}
    help_text = CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output
    for s in cli_settings():
        assert s.name in params and s.flag in params[s.name].opts, s.name
        assert params[s.name].default is None  # not given: the profile's value applies
        assert s.flag in help_text and s.help.split()[0] in help_text, s.name


def test_every_train_option_flows_into_the_config(monkeypatch, tmp_path):
    seen = {}

    def resolve(profile, train_over, model_over, spec=None):
        seen.update(train_over)
        raise PetsegError("stop here")

    monkeypatch.setattr(config_mod, "resolve", resolve)
    args = ["train", "unet", "--out", str(tmp_path / "out"), "--data-root", str(tmp_path / "data")]
    for s in cli_settings():
        args += [s.flag] if s.kind is bool else [s.flag, example(s)[0]]  # a switch: --compile / --no-compile
    result = CliRunner().invoke(main, args)
    assert "stop here" in result.output, result.output
    assert seen == {s.name: example(s)[1] for s in cli_settings()}


def test_a_new_setting_is_one_field():
    @dataclass(kw_only=True)
    class Config:
        warmup_epochs: int = setting(0, "Epochs of linear warm-up.")
        ema: bool = setting(False, "Keep an EMA of the weights.")
        mix: tuple[float, float] | None = setting(None, "Two numbers.", kind=str,
                                                   parse=config_mod.comma_floats(2), flag="--mix-weights")

    got = {}

    @click.command()
    @config_options(Config)
    def command(**opts):
        got.update(config_values(opts, Config))

    assert CliRunner().invoke(command, ["--warmup-epochs", "3", "--mix-weights", "1,2"]).exit_code == 0
    assert got == {"warmup_epochs": 3, "ema": None, "mix": (1.0, 2.0)}  # None: not given, the profile decides
    for args, value in ((["--ema"], True), (["--no-ema"], False)):
        assert CliRunner().invoke(command, args).exit_code == 0 and got["ema"] is value
    assert "Epochs of linear warm-up." in CliRunner().invoke(command, ["--help"]).output
    result = CliRunner().invoke(command, ["--mix-weights", "1"])
    assert isinstance(result.exception, PetsegError) and "--mix-weights needs 2 comma-separated" in str(result.exception)


@pytest.mark.parametrize("args,needle", [
    (["--class-weights", "1,2"], "--class-weights needs 3 comma-separated numbers, got '1,2'"),
    (["--phase-epochs", "8,x"], "--phase-epochs needs comma-separated whole numbers, got '8,x'"),
    (["--optimizer", "lion"], "--optimizer must be one of adamw, adam, sgd, rmsprop, got 'lion'"),
    (["--augment", "heavy"], "--augment must be one of seed, light, none, got 'heavy'"),
    (["--lr", "nan"], "--lr"),
    (["--epochs", "many"], "--epochs"),
])
def test_bad_train_values_are_one_line(args, needle, tmp_path):
    result = CliRunner().invoke(main, ["train", "unet", "--out", str(tmp_path / "o"),
                                       "--data-root", str(tmp_path / "d"), *args])
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert result.exit_code != 0 and len(lines) == 1 and needle in lines[0], result.output


def test_one_loss_weight_fallback():
    spec = get_registry().get("model", "unet")
    assert TrainConfig().loss_weights(spec) == (spec.loss.ce, spec.loss.dice)
    assert TrainConfig(ce_weight=0.5).loss_weights(spec) == (0.5, spec.loss.dice)
    assert TrainConfig(dice_weight=0.0).loss_weights(spec) == (spec.loss.ce, 0.0)


def test_wide_dataclasses_are_keyword_only():
    from petseg_bench.engine.sweep import SweepJob, SweepSource
    from petseg_bench.engine.train_loop import TrainContext
    from petseg_bench.engine.training import TrainJob

    for cls in (TrainConfig, TrainContext, TrainJob, SweepJob, SweepSource):
        assert all(f.kw_only for f in dataclasses.fields(cls)), cls.__name__
    with pytest.raises(TypeError):
        TrainJob("unet", TrainConfig(), "data", "out")  # noqa - positional on purpose


def test_cli_keeps_no_second_list_of_train_settings():
    assert not hasattr(cli_mod, "TRAIN_KEYS")


# --------------------------------------------------------------------------- the loop's contracts


class Recorder(HookBase):
    def __init__(self, stop_at: int | None = None):
        self.events, self.stop_at, self.saw_stop = [], stop_at, []

    def before_train(self, loop):
        self.events.append("before")

    def after_epoch(self, loop):
        self.events.append(f"epoch {loop.state.epoch}")
        return loop.state.epoch == self.stop_at

    def after_record(self, loop):
        self.saw_stop.append(loop.stop)

    def after_train(self, loop):
        self.events.append("after")


def bare_loop(hooks, epochs: int, train_epoch) -> TrainLoop:
    """A loop over a stand-in context: one phase of ``epochs``, ``train_epoch`` its work."""
    ctx = SimpleNamespace(phases=[SimpleNamespace(name="segment", loss="segmentation")], budget=[epochs], model=None)
    loop = TrainLoop(ctx, TrainState(), hooks)
    loop.start_phase = lambda: None
    loop.train_epoch = train_epoch
    return loop


def test_after_train_runs_when_an_epoch_raises():
    rec = Recorder()

    def fail(loss_kind):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        bare_loop([rec], 3, fail).run()
    assert rec.events == ["before", "after"]


def test_a_hook_stops_the_training_by_returning_true():
    rec, other = Recorder(stop_at=2), Recorder()
    loop = bare_loop([rec, other], 5, lambda loss_kind: None)
    loop.run()
    assert loop.state.epoch == 2 and loop.state.done
    assert other.events == ["before", "epoch 1", "epoch 2", "after"]  # every hook still heard each epoch
    assert rec.saw_stop == other.saw_stop == [False, True]


def test_early_stopping_returns_its_decision():
    hook = hooks_mod.EarlyStopping(2)
    loop = SimpleNamespace(row={"val_miou": 0.1}, state=SimpleNamespace(bad_epochs=2))
    assert hook.after_epoch(loop) is True and not hasattr(loop, "stop")
    loop.state.bad_epochs = 1
    assert hook.after_epoch(loop) is False
    assert hooks_mod.EarlyStopping(0).after_epoch(SimpleNamespace(row={"val_miou": 0.1},
                                                                  state=SimpleNamespace(bad_epochs=9))) is False


def test_improved_is_read_from_the_tracked_best():
    loop = bare_loop([], 1, lambda loss_kind: None)
    loop.row = {"epoch": 1}
    assert not loop.improved  # not validated
    loop.row["val_miou"] = 0.4
    hooks_mod.TrackBest().after_epoch(loop)
    assert loop.improved and loop.state.best == 0.4
    hooks_mod.TrackBest().after_epoch(loop)  # the same figure again: no better
    assert not loop.improved and loop.state.bad_epochs == 1


@pytest.mark.parametrize("mode", [True, False])
def test_predictor_logits_restore_the_module_mode(mode):
    spec = get_registry().get("model", "unet")
    config = spec.config({"in_size": 32}, {"base_channels": 4, "dropout": 0.2})
    model = spec.build(config)
    pr = Predictor(model, spec, config, Runtime.choose("cpu", "fp32"))
    modes = []
    model.register_forward_pre_hook(lambda module, args, kwargs: modes.append(module.training), with_kwargs=True)
    model.train(mode)
    pr.logits(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert modes == [False]  # predicted in eval mode
    assert model.training is mode and all(m.training is mode for m in model.modules())
