"""A real third-party package, pip-installed, joins through the entry-point group."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent / "example_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # --target keeps the test environment itself untouched; the dist-info that pip
    # writes there is what importlib.metadata reads the entry point from.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    assert list(target.glob("petseg_example_plugin-*.dist-info"))
    return target


def test_listed_by_the_cli(installed):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run([sys.executable, "-m", "petseg_bench.cli", "list", "example*"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "example_fcn" in out.stdout
    assert "third-party example" in out.stdout


def test_not_listed_without_the_package():
    out = subprocess.run([sys.executable, "-m", "petseg_bench.cli", "list", "example*"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "example_fcn" not in out.stdout


def test_built_and_run_like_a_builtin(installed, monkeypatch):
    import torch

    from petseg_bench.plugins import build_registry, make_manager

    monkeypatch.syspath_prepend(str(installed))
    reg = build_registry(*make_manager())
    assert reg.origins[("model", "example_fcn")] == "example"
    spec = reg.get("model", "example_fcn")
    assert reg.select("model", "example*") == ["example_fcn"]
    model = spec.build(spec.config(in_size=32))
    logits = model(image=torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3, 32, 32)
