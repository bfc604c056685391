"""Training speed levers (issue 25): the optimiser step's implementation and torch.compile.

``foreach`` is the default because it gives the per-parameter loop's bits (proved here on
every optimiser, through the real loop); ``fused`` and ``--compile`` are options whose
numbers differ in the last bits, so they are compared within a tolerance. The slow tests
compile a tiny model for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from petseg_bench.config import TrainConfig
from petseg_bench.engine import checkpoint
from petseg_bench.engine import runtime as runtime_mod
from petseg_bench.engine.losses import segmentation_loss
from petseg_bench.engine.predictor import build_model
from petseg_bench.engine.runtime import Runtime, compile_cache_dir
from petseg_bench.engine.train_loop import make_optimizer, param_groups
from petseg_bench.errors import PetsegError
from petseg_bench.plugins import get_registry

from conftest import quiet, train, write_dataset

TINY = dict(in_size=32, base_channels=4)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=6, n_dog=6, size=(40, 56))


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=4, workers=0, precision="fp32", device="cpu", seed=3, val_fraction=0.25,
                lr=1e-3, patience=0)
    return TrainConfig(**{**base, **kw})


def tiny_unet(seed: int = 0):
    spec = get_registry().get("model", "unet")
    config = spec.config({"in_size": 32}, {"base_channels": 4}, None)
    return spec, build_model(spec, config, Runtime.choose("cpu", "fp32"), seed).train()


def steps(cfg: TrainConfig, n: int = 6, compile_model: bool = False, precision: str = "fp32") -> tuple[list, dict]:
    """``n`` training steps of a tiny U-Net as the loop takes them: (losses, final weights)."""
    spec, model = tiny_unet()
    opt = make_optimizer(cfg, param_groups(model, {"enc": 0.5}, cfg.lr))  # two groups, two learning rates
    forward = runtime_mod.compiled(model) if compile_model else model
    autocast = Runtime.choose("cpu", precision).autocast
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(n):
        x = torch.randn(4, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 3, (4, 32, 32), generator=gen)
        with autocast():
            out = forward(image=x)
        loss = segmentation_loss(out, y, torch.tensor([1.0, 2.0, 1.0]), 1.0, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 0.5, foreach=cfg.optimizer_impl != "loop")
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "rmsprop"])
def test_foreach_steps_give_the_loops_bits(optimizer):
    loop_losses, loop_w = steps(tiny_cfg(optimizer=optimizer, optimizer_impl="loop", weight_decay=0.05))
    each_losses, each_w = steps(tiny_cfg(optimizer=optimizer, optimizer_impl="foreach", weight_decay=0.05))
    assert each_losses == loop_losses
    assert [k for k in loop_w if not torch.equal(loop_w[k], each_w[k])] == []
    assert loop_losses[0] != loop_losses[-1]  # the weights did move


def test_fused_is_close_but_an_option():
    loop_losses, loop_w = steps(tiny_cfg(optimizer_impl="loop"))
    fused_losses, fused_w = steps(tiny_cfg(optimizer_impl="fused"))
    assert fused_losses == pytest.approx(loop_losses, rel=1e-5)
    for k in loop_w:
        torch.testing.assert_close(fused_w[k], loop_w[k], rtol=1e-4, atol=1e-5)
    assert TrainConfig().optimizer_impl == "foreach" and TrainConfig().compile is False


def test_fused_rmsprop_is_refused_in_one_line():
    with pytest.raises(PetsegError, match="^--optimizer-impl fused needs --optimizer adamw, adam, sgd, got 'rmsprop' \(pass --optimizer-impl foreach with it\)$"):
        tiny_cfg(optimizer="rmsprop", optimizer_impl="fused").validate()


def test_the_loop_trains_the_same_with_foreach_and_loop(tmp_path, data_root):
    a = train("unet", tiny_cfg(epochs=2, optimizer_impl="loop"), TINY, data_root, tmp_path / "loop", log=quiet)
    b = train("unet", tiny_cfg(epochs=2), TINY, data_root, tmp_path / "foreach", log=quiet)
    wa, wb = checkpoint.load(a.last_path)["state_dict"], checkpoint.load(b.last_path)["state_dict"]
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    assert a.best_val_miou == b.best_val_miou


def test_a_last_pt_from_before_the_new_settings_resumes(tmp_path, data_root):
    out = tmp_path / "runs"

    def interrupt(epoch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("unet", tiny_cfg(epochs=2), TINY, data_root, out, log=quiet, on_epoch_end=interrupt)
    last = out / "unet" / "last.pt"
    saved = checkpoint.load(last)
    for name in ("optimizer_impl", "compile"):  # as an older petseg-bench wrote it
        del saved["train_config"][name]
    checkpoint.save(last, {k: v for k, v in saved.items() if k not in ("format", "format_version")})
    with pytest.raises(PetsegError, match=r"\(compile: False -> True\)"):
        train("unet", tiny_cfg(epochs=2, compile=True), TINY, data_root, out, resume=True, log=quiet)
    messages = []
    again = train("unet", tiny_cfg(epochs=2), TINY, data_root, out, resume=True, log=messages.append)
    assert again.epochs_run == 2 and any("resuming after epoch 1" in m for m in messages)


def test_compile_wraps_the_training_forward_only(tmp_path, data_root, monkeypatch):
    """--compile hands the training model to torch.compile (static shapes) with the cache
    folder set; validation and the checkpoints see the plain model."""
    calls = []

    def fake_compile(module, **kw):
        calls.append((module, kw, os.environ.get("TORCHINDUCTOR_CACHE_DIR")))
        return module

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(torch, "compile", fake_compile)
    result = train("unet", tiny_cfg(compile=True), TINY, data_root, tmp_path / "out", log=quiet)
    assert len(calls) == 1 and calls[0][1] == {"dynamic": False}
    assert calls[0][2] == str(compile_cache_dir()) and Path(os.environ["PETSEG_CACHE"]) in Path(calls[0][2]).parents
    saved = checkpoint.load(result.best_path)
    assert saved["train_config"]["compile"] is True
    assert not any(k.startswith("_orig_mod") for k in saved["state_dict"])


def test_a_compile_failure_is_one_line(tmp_path, data_root, monkeypatch):
    from torch._dynamo.exc import InternalTorchDynamoError

    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            raise InternalTorchDynamoError("no C++ compiler\nfound")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken(module))
    with pytest.raises(PetsegError) as info:
        train("unet", tiny_cfg(compile=True), TINY, data_root, tmp_path / "out", log=quiet)
    message = str(info.value)
    assert "\n" not in message and "--compile: torch.compile failed" in message and "without --compile" in message


@pytest.mark.slow
@pytest.mark.parametrize("precision,lr,tol", [("fp32", 1e-3, 1e-4), ("bf16", 1e-2, 1e-2)])
def test_compiled_steps_match_eager_within_rounding(precision, lr, tol, tmp_path, monkeypatch):
    """Six steps of the same seed, eager and compiled: the losses agree within what the
    precision's rounding explains (bf16: its 8-bit mantissa, ~0.4% per op). Adam's steps
    amplify a last-bit difference step by step: at lr 1e-2 fp32 drifts to 0.3% by step 5."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    eager, _ = steps(tiny_cfg(lr=lr), precision=precision)
    fast, _ = steps(tiny_cfg(lr=lr), compile_model=True, precision=precision)
    assert fast == pytest.approx(eager, rel=tol)
    gap = max(abs(a - b) for a, b in zip(fast, eager))
    assert gap < abs(eager[0] - eager[-1]) / 4  # training moved the loss further than compiling did


CHILD = textwrap.dedent("""
    import json, torch
    from torch._dynamo.utils import counters
    from petseg_bench.engine.runtime import compiled
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(8, 3, 1))
    compiled(net)(torch.randn(2, 3, 16, 16)).sum().backward()
    print(json.dumps({**counters["inductor"], **counters["aot_autograd"]}))
""")


@pytest.mark.slow
def test_a_second_run_loads_the_compiled_kernels(tmp_path):
    env = {**os.environ, "PETSEG_CACHE": str(tmp_path / "cache")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    first, second = [json.loads(subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                                               text=True, check=True).stdout.splitlines()[-1]) for _ in range(2)]
    assert first.get("fxgraph_cache_miss", 0) == 2 and first.get("autograd_cache_miss", 0) == 1  # compiled
    assert second.get("fxgraph_cache_miss", 0) == 0 and second.get("autograd_cache_miss", 0) == 0  # loaded
    assert second.get("autograd_cache_hit", 0) == 1
    assert (tmp_path / "cache" / "inductor" / "fxgraph").is_dir()
