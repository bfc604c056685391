"""The robustness sweep engine: every model x perturbation x level, resumable.

Work is grouped by (perturbation, level): each batch of test images is perturbed once,
letterboxed once per input size, passed through a shared CLIP backbone once, and then
fed to every model that still needs that cell. The next batch's perturbation and
letterbox run in a background thread while the models compute. Finished cells are
written atomically; ``--resume`` skips them and recomputes anything unreadable.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data.cache import prepare
from .data.split import limit as limit_positions
from .errors import PetsegError
from .inference import Predictor, letterbox_batch, restore
from .inputs import clip_image
from .io import write_json_atomic
from .metrics import confusion_matrix
from .optimize import fold_batchnorm
from .plugins import get_registry
from .provenance import code_version, file_sha256, hardware, package_versions
from .results import CLEAN, Cell, read_cell, write_cell
from .runtime import Runtime
from .training import load_model

RUN_FILE = "run.json"
# run.json keys that must match for --resume to reuse finished cells.
RESUME_KEYS = ("models", "perturbations", "levels", "seed", "limit", "void", "image_ids", "data_fingerprint",
               "checkpoints", "perturbation_params")


def parse_levels(text: str | None, n_levels: int = 10) -> list[int]:
    """'all', '1-9', '0,3,5' -> sorted perturbed levels (level 0 is always run, once per model)."""
    if text is None or text == "all":
        return list(range(1, n_levels))
    levels: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                levels.update(range(int(a), int(b) + 1))
            else:
                levels.add(int(part))
        except ValueError:
            raise PetsegError(f"--levels: {part!r} is not a level, a range like 1-9, or 'all'") from None
    bad = sorted(lv for lv in levels if not 0 <= lv < n_levels)
    if bad:
        raise PetsegError(f"--levels: level {bad[0]} does not exist; levels are 0..{n_levels - 1}")
    return sorted(lv for lv in levels if lv > 0)


def image_rng(seed: int, perturbation: str, level: int, image_id: str) -> np.random.Generator:
    """The generator of one (run seed, perturbation, level, image): same pixels in any
    order, batch, worker or resume."""
    key = [seed, zlib.crc32(perturbation.encode()), level, zlib.crc32(image_id.encode())]
    return np.random.default_rng(np.random.SeedSequence(key))


def checkpoint_paths(models: list[str], checkpoints_dir: Path) -> dict[str, Path]:
    paths = {m: Path(checkpoints_dir) / m / "best.pt" for m in models}
    missing = [m for m, p in paths.items() if not p.is_file()]
    if missing:
        cmds = "; ".join(f"petseg-bench train {m} --profile quick --out {checkpoints_dir}" for m in missing)
        raise PetsegError(f"no checkpoint in {checkpoints_dir} for {', '.join(missing)}: train with `{cmds}` "
                          f"or pass --train-missing")
    return paths


@dataclass
class SweepPlan:
    models: list[str]
    perturbations: list[str]
    levels: list[int]
    seed: int = 0
    batch_size: int = 32
    limit: int | None = None
    void: str = "nearest"
    compile: bool = False  # torch.compile each model: pays on long sweeps, costs a cold start
    extra: dict = field(default_factory=dict)


def run_sweep(plan: SweepPlan, checkpoints_dir: Path, run_dir: Path, data_root: Path, *, resume: bool = False,
              cache_dir: Path | None = None, precision: str = "auto", device: str = "auto",
              progress: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or finish) a sweep into ``run_dir``; returns the run record (run.json)."""
    t_start = time.perf_counter()
    reg = get_registry()
    pert_specs = {p: reg.get("perturbation", p) for p in plan.perturbations}
    for name, spec in pert_specs.items():
        too_high = [lv for lv in plan.levels if lv >= len(spec.levels)]
        if too_high:
            raise PetsegError(f"--levels: perturbation {name!r} has levels 0..{len(spec.levels) - 1}, not {too_high[0]}")
    ckpts = checkpoint_paths(plan.models, checkpoints_dir)
    runtime = Runtime.choose(device, precision)

    test = prepare(data_root, "test", plan.void, cache_dir)
    if len(test) == 0:
        raise PetsegError(f"test split at {data_root} has no usable image")
    positions = limit_positions(np.arange(len(test)), plan.limit, plan.seed)
    ids = [test.names[int(p)] for p in positions]

    record = {
        "models": plan.models,
        "perturbations": plan.perturbations,
        "levels": plan.levels,
        "seed": plan.seed,
        "limit": plan.limit,
        "void": plan.void,
        "image_ids": ids,
        "data_fingerprint": test.fingerprint,
        "checkpoints": {m: file_sha256(p) for m, p in ckpts.items()},
        # A plugin that changed its level values makes old cells stale.
        "perturbation_params": {p: {"param": s.param, "values": list(s.levels)} for p, s in pert_specs.items()},
    }
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        saved = json.loads(run_file.read_text())
        if not resume:
            raise PetsegError(f"{run_dir} already holds a run; pass --resume to finish it, or choose another --out")
        diff = [k for k in RESUME_KEYS if _canonical(k, saved.get(k)) != _canonical(k, record[k])]
        if diff:
            detail = "; ".join(_describe_diff(k, saved.get(k), record[k]) for k in diff[:3])
            raise PetsegError(f"--resume: {run_dir} was made with another configuration ({detail})")
        record = {**saved, **record}
    record.update({
        "batch_size": plan.batch_size,
        "compile": plan.compile,
        "code_version": code_version(),
        "packages": package_versions(),
        "hardware": hardware(),
        "runtime": runtime.describe(),
        "started": record.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **plan.extra,
    })

    predictors: dict[str, Predictor] = {}
    model_info = {}
    for m, path in ckpts.items():
        spec, config, model, data = load_model(path, runtime, expect_model=m)
        fold_batchnorm(model)  # inference only: BN folded into the conv before it
        predictors[m] = Predictor(model, spec, config, runtime)
        if plan.compile:
            predictors[m].compile(plan.batch_size)
        model_info[m] = {"checkpoint": str(path), "sha256": record["checkpoints"][m], "clip": data.get("clip"),
                         "eval_click_rule": data.get("eval_click_rule"), "in_size": config.in_size,
                         "base_channels": config.base_channels, "train_config": data.get("train_config"),
                         "train_data_fingerprint": data.get("data_fingerprint"), "val": data.get("val"),
                         "epoch": data.get("epoch")}
    record["model_info"] = model_info
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, record)

    # Which cells are left, grouped by what they share: the perturbed pixels.
    todo: dict[tuple[str, int], list[str]] = defaultdict(list)
    n_done = 0
    for m in plan.models:
        cells = [Cell(m, CLEAN, 0)] + [Cell(m, p, lv) for p in plan.perturbations for lv in plan.levels]
        for cell in cells:
            if read_cell(run_dir, cell, ids) is not None:
                n_done += 1
            else:
                todo[(cell.perturbation, cell.level)].append(m)
    n_cells = sum(len(v) for v in todo.values())
    if n_done:
        log(f"resume: {n_done} finished cells kept, {n_cells} to compute")
    bar = None
    if progress and n_cells:
        from tqdm import tqdm

        bar = tqdm(total=n_cells * len(ids), desc="sweep", unit="img")

    images = [test.image(int(p)) for p in positions]
    labels = [test.label(int(p)) for p in positions]
    t_compute = time.perf_counter()
    for (pert, level), models in todo.items():
        value = 0.0 if pert == CLEAN else pert_specs[pert].levels[level]
        mats = _run_group(pert, level, value, models, predictors, pert_specs.get(pert), images, labels, ids,
                          plan.seed, plan.batch_size, bar)
        for m in models:
            write_cell(run_dir, Cell(m, pert, level), ids, mats[m], value)
    if bar is not None:
        bar.close()
    compute_s = time.perf_counter() - t_compute
    record["cells_computed"] = n_cells
    record["image_levels_per_s"] = round(n_cells * len(ids) / compute_s, 2) if n_cells else None
    record["wall_seconds"] = round(time.perf_counter() - t_start + record.get("wall_seconds_before", 0.0), 1)
    record["wall_seconds_before"] = record["wall_seconds"]
    write_json_atomic(run_file, record)
    return record


def _run_group(pert, level, value, models, predictors, pert_spec, images, labels, ids, seed, batch_size, bar):
    """Confusion matrices of every model in ``models`` on one (perturbation, level)."""
    sizes = sorted({predictors[m].config.in_size for m in models})

    def produce(start: int):
        chunk = slice(start, start + batch_size)
        imgs, labs = images[chunk], labels[chunk]
        if pert_spec is not None and level > 0:
            rngs = [image_rng(seed, pert, level, i) for i in ids[chunk]]
            imgs = pert_spec.apply(imgs, value, rngs)
        # One letterbox per input size, shared by the models of that size.
        needs_clicks = any("point" in predictors[m].spec.inputs for m in models)
        boxed = {s: letterbox_batch(imgs, s, labs if needs_clicks else None) for s in sizes}
        return labs, boxed

    def score(logits, boxes, labs, n_classes):
        return [confusion_matrix(p, t, n_classes) for p, t in zip(restore(logits, boxes), labs)]

    mats = {m: [] for m in models}
    starts = list(range(0, len(images), batch_size))
    # Two helper threads: one prepares the next batch (perturb, letterbox), one turns
    # logits into confusion matrices; the main thread only runs the models.
    with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(1) as post:
        pending = pool.submit(produce, starts[0])
        for k, _ in enumerate(starts):
            labs, boxed = pending.result()
            if k + 1 < len(starts):
                pending = pool.submit(produce, starts[k + 1])
            clip_cache: dict[tuple[str, int], torch.Tensor] = {}
            for m in models:
                pr = predictors[m]
                batch, boxes, points = boxed[pr.config.in_size]
                feats = None
                key = getattr(pr.model, "clip_key", None)
                if key is not None:  # one CLIP pass per batch, shared by every model on that backbone
                    ck = (key, pr.config.in_size)
                    if ck not in clip_cache:
                        with torch.no_grad(), pr.runtime.autocast():
                            clip_cache[ck] = pr.model.clip(clip_image(batch.to(pr.runtime.device))).float()
                    feats = clip_cache[ck]
                logits = pr.logits(batch, points if "point" in pr.spec.inputs else None, feats)
                mats[m].append(post.submit(score, logits, boxes, labs, pr.config.n_classes))
                if bar is not None:
                    bar.update(len(labs))
        return {m: np.stack([cm for f in futures for cm in f.result()]) for m, futures in mats.items()}


def _canonical(key: str, value):
    """Order does not matter for the model and perturbation lists."""
    return sorted(value) if key in ("models", "perturbations") and value is not None else value


def _describe_diff(key: str, old, new) -> str:
    if key in ("image_ids",):
        return f"test images differ ({len(old or [])} before, {len(new)} now)"
    if key == "checkpoints":
        changed = sorted(m for m in set(old or {}) | set(new) if (old or {}).get(m) != new.get(m))
        return f"checkpoints changed for {', '.join(changed)}"
    return f"{key}: {old!r} -> {new!r}"
