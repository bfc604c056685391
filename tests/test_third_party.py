"""A real third-party package, pip-installed, joins through the entry-point group: its
model and its backbone are listed, built and run like the built-ins, and a built-in model
runs on its backbone with no change to the core."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent / "example_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # --target keeps the test environment itself untouched; the dist-info that pip
    # writes there is what importlib.metadata reads the entry point from. The source is
    # copied first so that the build leaves nothing behind in the working tree.
    source = tmp_path_factory.mktemp("src") / "example_plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    assert list(target.glob("petseg_example_plugin-*.dist-info"))
    return target


def with_plugin(installed: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}


def petseg_bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``petseg-bench ARGS`` as a user runs it (the console script beside this Python)."""
    script = Path(sys.executable).with_name("petseg-bench")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "petseg_bench.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=180)


def test_listed_by_the_cli(installed):
    out = petseg_bench("list", "example*", env=with_plugin(installed))
    assert out.returncode == 0, out.stderr
    assert "example_fcn" in out.stdout
    assert "third-party example" in out.stdout
    assert "'example'" not in out.stderr  # the plugin loads cleanly (no warning names it)
    # the backbone is listed in its own section, with its example key and its plugin
    assert "backbones:" in out.stdout
    section = out.stdout.split("backbones:", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("example_pool"))
    assert "example" in row.split()[1] and "e.g. example_pool:8" in row


def test_not_listed_without_the_package():
    out = petseg_bench("list", "example*")
    assert out.returncode != 0
    assert "example_fcn" not in out.stdout and "example_pool" not in out.stdout


def test_built_and_run_like_a_builtin(installed, monkeypatch):
    import torch

    from petseg_bench.backbones import Features, backbone_input
    from petseg_bench.plugins import build_registry, make_manager

    monkeypatch.syspath_prepend(str(installed))
    reg = build_registry(*make_manager())
    assert reg.origins[("model", "example_fcn")] == "example"
    spec = reg.get("model", "example_fcn")
    assert reg.select("model", "example*") == ["example_fcn"]
    cfg = spec.config({"in_size": 32})
    assert cfg.opt("width") == 8 and cfg.options == {"width": 8}  # its option's default
    model = spec.build(cfg)
    logits = model(image=torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3, 32, 32)

    assert reg.origins[("backbone", "example_pool")] == "example"
    assert reg.select("backbone", "example*") == ["example_pool"]
    backbone = reg.get("backbone", "example_pool").build("8")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = backbone_input(backbone.preprocess, images)
    assert x.shape == (2, 3, 64, 64) and x.min() >= -1 and x.max() <= 1  # its own size, mean and std
    features = backbone(x)
    assert isinstance(features, Features) and features.embedding.shape == (2, 8)
    assert [m.shape for m in features.maps] == [(2, 3, 8, 8)]


#: Run in a fresh process (the plugin on PYTHONPATH, so the process-wide registry and
#: backbone cache see it): the built-in ``clip_unet`` on the third-party backbone, through
#: the harness's Predictor, on two images of different sizes.
BUILTIN_ON_THIRD_PARTY = textwrap.dedent("""
    import json

    import numpy as np
    import torch

    from petseg_bench.backbones import load_backbone
    from petseg_bench.engine.predictor import Predictor, build_model, letterbox_batch
    from petseg_bench.engine.runtime import Runtime
    from petseg_bench.errors import PetsegError
    from petseg_bench.plugins import get_registry

    reg = get_registry()
    spec = reg.get("model", "clip_unet")
    cfg = spec.config({"in_size": 32, "base_channels": 4}, {"backbone": "example_pool:8"})
    runtime = Runtime.choose("cpu", "fp32")
    model = build_model(spec, cfg, runtime, seed=0)
    backbone = load_backbone(spec.backbone_key(cfg))
    predictor = Predictor(model, spec, cfg, runtime, backbone)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (30, 18, 3), dtype=np.uint8)]
    labels = [rng.integers(0, 3, im.shape[:2], dtype=np.uint8) for im in images]
    masks = predictor.predict(images, labels)

    # the third-party features do reach the model: other features, other logits
    batch, _, _ = letterbox_batch(images, cfg.in_size)
    before = predictor.logits(batch)
    with torch.no_grad():
        backbone.projection.mul_(-3.0)
    after = predictor.logits(batch)

    wider = spec.config({"in_size": 32, "base_channels": 4}, {"backbone": "example_pool:16"})
    try:
        load_backbone("example_pool:wide")
        bad = None
    except PetsegError as exc:
        bad = str(exc)
    print(json.dumps({
        "problems": reg.problems,
        "origin": reg.origins[("backbone", "example_pool")],
        "backbone_class": type(backbone).__module__ + "." + type(backbone).__name__,
        "describe": backbone.describe(),
        "embed_dim": model.embed_dim,
        "project_in": model.project.in_features,
        "wider_in": build_model(spec, wider, runtime).project.in_features,
        "shapes": [list(m.shape) for m in masks],
        "dtypes": [str(m.dtype) for m in masks],
        "values": sorted({int(v) for m in masks for v in np.unique(m)}),
        "features_matter": not torch.allclose(before, after),
        "bad_key": bad,
    }))
""")


def test_builtin_model_runs_on_a_third_party_backbone(installed):
    out = subprocess.run([sys.executable, "-c", BUILTIN_ON_THIRD_PARTY], capture_output=True, text=True,
                         env=with_plugin(installed), timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [p for p in result["problems"] if "example" in p]
    assert result["origin"] == "example"
    assert result["backbone_class"] == "petseg_example_plugin.MeanPoolBackbone"
    assert result["describe"] == {"key": "example_pool:8", "label": "example mean-pool projection (8-d)",
                                  "random_init": True}
    assert result["embed_dim"] == result["project_in"] == 8
    assert result["wider_in"] == 16
    assert result["shapes"] == [[40, 56], [30, 18]]  # each image's own size
    assert result["dtypes"] == ["uint8", "uint8"]
    assert set(result["values"]) <= {0, 1, 2}
    assert result["features_matter"]
    bad = result["bad_key"]
    assert bad and "\n" not in bad and "example_pool:wide" in bad and "positive embedding size" in bad
