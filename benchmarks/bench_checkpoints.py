"""Untrained checkpoints for the benchmarks, written as ``petseg-bench train`` writes them.

Throughput and memory do not depend on the weights, so the benchmarks skip training and
save a freshly built model. Everything else goes through the same public pieces as
``engine/training.py``: the profile's configs (``config.resolve``, ``ModelSpec.config``
with the spec's per-profile options), ``build_model`` (seeded, channels_last), the frozen
backbone from ``attach_backbone`` recorded by its ``describe()``, ``trainable_state``
(frozen parts left out) and ``checkpoint.save``. The result loads with
``load_predictor`` like any trained checkpoint.

Not ``training.setup``: that also prepares the trainval split and sets torch's global
fp32 matmul precision, which would change the benchmarks' fp32 baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from petseg_bench.config import resolve
from petseg_bench.data.points import EVAL_CLICK_RULE
from petseg_bench.engine import checkpoint
from petseg_bench.engine.predictor import attach_backbone, build_model, trainable_state
from petseg_bench.engine.runtime import Runtime
from petseg_bench.plugins import get_registry
from petseg_bench.provenance import code_version

#: Stands in for the training data's fingerprint: these weights saw no data.
UNTRAINED = "untrained (benchmark)"


def profile_config(model: str, profile: str, options: Mapping[str, Any] | None = None):
    """(spec, TrainConfig, ModelConfig) of ``model`` at ``profile``, as ``petseg-bench
    train MODEL --profile PROFILE`` resolves them: the profile's fields, the spec's own
    per-profile fields and options (e.g. a larger ``in_size``), then ``options``."""
    spec = get_registry().get("model", model)
    train_cfg, generic = resolve(profile, {}, {}, spec)
    return spec, train_cfg, spec.config(generic, dict(options or {}), profile)


def save_untrained(folder: Path, model: str, profile: str, options: Mapping[str, Any] | None = None,
                   seed: int = 0) -> Path:
    """``folder/<model>/best.pt``: ``model`` built at ``profile`` (its generic fields and
    the spec's per-profile options, ``options`` on top) with seeded random weights."""
    spec, train_cfg, config = profile_config(model, profile, options)
    runtime = Runtime.choose("cpu", "fp32")  # where the weights are built; the sweep picks its own
    backbone = attach_backbone(spec, config)
    net = build_model(spec, config, runtime, seed)
    path = Path(folder) / model / "best.pt"
    checkpoint.save(path, {
        "model": model, "model_config": config.to_dict(), "train_config": train_cfg.to_dict(),
        "data_fingerprint": UNTRAINED, "n_train": 0, "n_val": 0, "code_version": code_version(),
        "runtime": runtime.describe(), "backbone": None if backbone is None else backbone.describe(),
        "eval_click_rule": EVAL_CLICK_RULE if "point" in spec.inputs else None,
        "state_dict": trainable_state(spec, net),
    })
    return path
