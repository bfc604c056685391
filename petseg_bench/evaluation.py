"""``petseg-bench evaluate``: a checkpoint's test metrics, both reductions, with CIs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

from . import CLASS_NAMES
from .data.cache import prepare
from .data.split import limit as limit_positions
from .inference import Predictor, confusion_over
from .metrics import REDUCTIONS, summarize
from .plugins import get_registry
from .provenance import code_version
from .runtime import Runtime
from .training import load_model


def evaluate_checkpoint(path: Path, data_root: Path, cache_dir: Path | None = None, limit: int | None = None,
                        batch_size: int = 16, n_boot: int = 1000, precision: str = "auto",
                        device: str = "auto", seed: int = 0) -> dict:
    runtime = Runtime.choose(device, precision)
    spec, config, model, ckpt = load_model(path, runtime)
    void = ckpt["train_config"].get("void", "nearest")
    test = prepare(data_root, "test", void, cache_dir)
    positions = limit_positions(np.arange(len(test)), limit, seed)
    t0 = time.perf_counter()
    cms = confusion_over(Predictor(model, spec, config, runtime), test, positions, batch_size)
    seconds = time.perf_counter() - t0
    metrics = get_registry().metrics
    return {
        "model": ckpt["model"],
        "checkpoint": str(path),
        "split": "test",
        "void": void,
        "clip": ckpt.get("clip"),
        "eval_click_rule": ckpt.get("eval_click_rule"),
        "data_fingerprint": test.fingerprint,
        "train_data_fingerprint": ckpt["data_fingerprint"],
        "code_version": code_version(),
        "runtime": runtime.describe(),
        "seconds": round(seconds, 2),
        "metrics": summarize(cms, metrics, n_boot=n_boot, seed=seed),
    }


def format_summary(result: dict) -> str:
    m = result["metrics"]
    rows = []
    for reduction in REDUCTIONS:
        block = m[reduction]
        row = [reduction]
        for name in ("iou", "dice", "pixel_accuracy"):
            entry = block.get(name, {})
            text = _fmt(entry.get("mean"))
            if "ci95" in entry and None not in entry["ci95"]:
                text += f" [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"
            row.append(text)
        row += [_fmt(block["iou"]["per_class"][c]) for c in CLASS_NAMES]
        rows.append(row)
    head = f"{result['model']} on {result['split']} ({m['n_images']} images, void {result['void']})"
    if result.get("clip"):
        c = result["clip"]
        head += f"; CLIP {c['model']} weights: {c['pretrained']}" + (" (random init: not a pretrained-CLIP result)" if c["pretrained"] == "none" else "")
    table = tabulate(rows, headers=["reduction", "mIoU", "mDice", "pixel acc"] + [f"IoU {c}" for c in CLASS_NAMES])
    return f"{head}\n{table}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
