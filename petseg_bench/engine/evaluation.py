"""``petseg-bench evaluate``: a checkpoint's test metrics, both reductions, with CIs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tabulate import tabulate

from ..config import check_seed
from ..data.breeds import breed_scores, training_breeds
from ..data.cache import prepare, refuse_changed
from ..data.layout import list_split, refuse_overlap
from ..data.split import limit as limit_positions
from ..data.split import validation_split
from ..errors import ModelRunError, PetsegError
from ..labels import CLASS_NAMES
from ..metrics import REDUCTIONS, summarize
from ..plugins import get_registry
from ..provenance import code_version
from .dropped import note_dropped
from .inference import clean_batches, inference_on_dataset
from .checkpoint import folder_model
from .predictor import load_predictor
from .runtime import Runtime


@dataclass
class EvalJob:
    checkpoint: Path
    data_root: Path
    cache_dir: Path | None = None
    limit: int | None = None
    batch_size: int = 16
    n_boot: int = 1000
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    void: str | None = None  # None: the mode the checkpoint was trained with
    allow_overlap: bool = False  # test images also in trainval: evaluation-only data, recorded
    #: "test", or "val": the checkpoint's validation part of trainval (its seed, fraction and
    #: val_limit, as its training validated), where settings are chosen without the test split
    split: str = "test"

    def validate(self) -> None:
        if self.void not in (None, "nearest", "ignore"):
            raise PetsegError(f"--void must be nearest or ignore, got {self.void!r}")
        if self.split not in ("test", "val"):
            raise PetsegError(f"--split must be test or val, got {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise PetsegError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise PetsegError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_seed(self.seed)


def evaluate_checkpoint(job: EvalJob, log: Callable[[str], None] = lambda message: None) -> dict:
    job.validate()
    overlap = refuse_overlap(job.data_root, job.allow_overlap, log, "--allow-overlap")
    pr = load_predictor(job.checkpoint, Runtime.choose(job.device, job.precision),
                        expect_model=folder_model(job.checkpoint))  # OUT/<model>/best.pt claims <model>
    info = pr.info
    void = job.void or (info.get("train_config") or {}).get("void", "nearest")
    if job.split == "val":
        test, positions = validation_part(job, info, void)
    else:
        test = prepare(job.data_root, "test", void, job.cache_dir)
        if len(test) == 0:
            raise PetsegError(f"test split at {job.data_root} has no usable image")
        positions = np.arange(len(test))
    note_dropped(test, log)
    positions = limit_positions(positions, job.limit, job.seed)
    t0 = time.perf_counter()
    try:
        cms = inference_on_dataset({"m": pr}, clean_batches(test, positions, {"m": pr}, job.batch_size))["m"]
    except ModelRunError as exc:
        raise exc.at(f"evaluating {job.checkpoint} on the test split") from None
    seconds = time.perf_counter() - t0
    return {
        "model": info["model"],
        "checkpoint": str(job.checkpoint),
        "split": job.split,
        "void": void,
        "backbone": info.get("backbone"),
        "encoder": info.get("encoder"),
        "eval_click_rule": info.get("eval_click_rule"),
        "data_fingerprint": test.fingerprint,
        "train_data_fingerprint": info.get("data_fingerprint"),
        "code_version": code_version(),
        "runtime": pr.runtime.describe(),
        "seconds": round(seconds, 2),
        "metrics": summarize(cms, get_registry().metrics, n_boot=job.n_boot, seed=job.seed),
        **({"allowed_overlap": overlap} if overlap else {}),  # --allow-overlap: the test images in trainval
        "breeds": breed_scores([test.names[p] for p in positions], cms, training_breeds(job.data_root)),
    }


def validation_part(job: EvalJob, info: dict, void: str):
    """(prepared trainval, the validation positions the checkpoint's training used), or
    one line when they cannot be rebuilt (no training settings, other trainval data)."""
    cfg = info.get("train_config")
    if not isinstance(cfg, dict) or not info.get("data_fingerprint"):
        raise PetsegError(f"--split val: {job.checkpoint} records no training settings and data fingerprint, "
                          f"so its validation part cannot be rebuilt")
    trainval = prepare(job.data_root, "trainval", void, job.cache_dir)
    refuse_changed(trainval, info["data_fingerprint"], f"--split val: {job.checkpoint} was trained")
    try:
        _, val = validation_split(trainval.species, float(cfg.get("val_fraction", 0.1)), int(cfg.get("seed", 0)))
        val = limit_positions(val, cfg.get("val_limit"), int(cfg.get("seed", 0)))
    except (TypeError, ValueError) as exc:
        raise PetsegError(f"--split val: {job.checkpoint}'s training settings are unusable ({exc})") from None
    return trainval, val


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
    bb = result.get("backbone")
    if bb:
        head += f"; frozen backbone {bb['label']}" + (" (random weights: not a result with a pretrained backbone)"
                                                      if bb.get("random_init") else "")
    if result.get("encoder"):
        head += f"; encoder {result['encoder']}"
    table = tabulate(rows, headers=["reduction", "mIoU", "mDice", "pixel acc"] + [f"IoU {c}" for c in CLASS_NAMES])
    return f"{head}\n{table}" + (f"\n{group_lines(result['breeds'])}" if result.get("breeds") else "")


def group_lines(breeds: dict) -> str:
    """The two breed groups' dataset mIoU, one line."""
    parts = []
    for group, s in breeds["groups"].items():
        n_breeds = sum(1 for b in breeds["breeds"].values() if b["group"] == group)
        parts.append(f"{group} ({n_breeds} breeds, {s['n_images']} images): mIoU {_fmt(s['miou'])}")
    return f"breeds (>= {breeds['min_count']} training images = well represented; dataset reduction): " + "; ".join(parts)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
