"""The robustness sweep engine: every model x perturbation x level, resumable.

Work is grouped by (perturbation, level): each batch of test images is perturbed once,
letterboxed once per input size, passed through each shared frozen backbone once, and then
fed to every model that still needs that cell; the evaluation clicks of point models are
placed once per sweep. On a GPU the next batch's perturbation and letterbox run in a
background thread while the models compute; on the CPU they run between forwards, the
images split over the forward's threads (see :mod:`.inference`). Finished cells are
written atomically; ``--resume`` skips them and recomputes anything unreadable.

A group is computed by :func:`compute_group` wherever a backend runs it: one after
another in this process (:class:`LocalBackend`) or as Ray tasks (:mod:`.ray_backend`),
each process loading what the groups share once (:func:`load_sweep_data` from a
picklable :class:`SweepSource`). Either way this process alone writes the run folder.
A plan with a shard (:mod:`.shard`) computes only that shard's groups.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.cache import prepare
from ..data.split import limit as limit_positions
from ..config import check_seed
from ..errors import ModelRunError, PetsegError
from ..perturbation import off_foreground, perturb, perturb_clicks
from ..plugins import get_registry
from ..provenance import code_version, file_sha256, hardware, hardware_info, package_versions
from ..results import CLEAN, RUN_FILE, Cell, read_cell, read_run, shard_dirs, write_cell, write_run
from ..specs import PerturbationSpec
from .dropped import note_dropped
from .inference import inference_on_dataset, make_batch, overlaps, prefetch
from .predictor import Predictor, letterbox_clicks, load_predictor
from .runtime import Runtime, in_parallel
from .shard import Shard, all_groups, check_shard_counts, run_lock

# run.json keys that must match for --resume to reuse finished cells. The runtime is among
# them: bf16 and fp32 (or another GPU model, or compiled kernels) give other logits, and
# near ties flip pixels, so cells computed under two runtimes would mix two results.
RESUME_KEYS = ("models", "perturbations", "levels", "seed", "limit", "void", "image_ids", "data_fingerprint",
               "checkpoints", "perturbation_params", "precision", "device", "batch_size", "compile")
#: Sub-folders of a run folder whose stale temporary files a new writer removes.
RUN_FOLDERS = ("", "cells/*", "plots")


def parse_levels(text: str | None, n_levels: int = 10) -> list[int]:
    """'all', '1-9', '0,3,5' -> sorted perturbed levels (level 0 is always run, once per model)."""
    if text is None or text == "all":
        return list(range(1, n_levels))
    levels: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if a > b:
                    raise PetsegError(f"--levels: the range {part!r} is empty (it starts above its end)")
                levels.update(range(a, b + 1))
            else:
                levels.add(int(part))
        except ValueError:
            raise PetsegError(f"--levels: {part!r} is not a level, a range like 1-9, or 'all'") from None
    bad = sorted(lv for lv in levels if not 0 <= lv < n_levels)
    if bad:
        raise PetsegError(f"--levels: level {bad[0]} does not exist; levels are 0..{n_levels - 1}")
    return sorted(lv for lv in levels if lv > 0)


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
    shard: Shard | None = None  # compute only this shard's (perturbation, level) groups

    def validate(self) -> None:
        """One line for a plan that cannot run, before anything is written."""
        check_seed(self.seed)
        if self.limit is not None and self.limit < 1:
            raise PetsegError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise PetsegError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.models:
            raise PetsegError("--models selects no model")
        if not self.perturbations:
            raise PetsegError("--perturbations selects no perturbation")


@dataclass
class SweepJob:
    """A plan, where its checkpoints, data and results live, and how to run it."""

    plan: SweepPlan
    checkpoints_dir: Path
    run_dir: Path
    data_root: Path
    resume: bool = False
    cache_dir: Path | None = None
    precision: str = "auto"
    device: str = "auto"
    backend: str = "local"  # "local" (this process) or "ray" (tasks on a Ray cluster)
    address: str | None = None  # the Ray cluster's address; None starts a local Ray
    cpus_per_task: int = 1  # Ray: CPUs (torch threads) per group task

    @property
    def record_dir(self) -> Path:
        """Where this job's run.json goes: the run folder, or its shard's folder."""
        return Path(self.run_dir) if self.plan.shard is None else self.plan.shard.folder(self.run_dir)


@dataclass(frozen=True)
class SweepSource:
    """What a process needs to load a sweep's shared data (:func:`load_sweep_data`);
    picklable and hashable, so Ray workers get it and cache what they load by it."""

    checkpoints: tuple[tuple[str, str, str], ...]  # (model, path, sha256)
    data_root: str
    cache_dir: str | None
    void: str
    fingerprint: str
    ids: tuple[str, ...]
    perturbations: tuple[str, ...]
    seed: int
    batch_size: int
    device: str
    precision: str
    compile: bool


@dataclass
class GroupResult:
    """One group's confusion matrices per model, and for a click perturbation the share
    of moved clicks off the pet; ``runtime``: the device kind and precision it ran on."""

    mats: dict[str, np.ndarray]
    click_share: float | None = None
    runtime: tuple[str, str] | None = None


@dataclass
class SweepData:
    """What every (perturbation, level) group of a sweep shares."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    ids: list[str]
    predictors: dict[str, Predictor]
    perturbations: dict[str, PerturbationSpec]
    seed: int
    batch_size: int
    #: The evaluation rule's click of each image at original resolution, computed once
    #: when a click perturbation is swept (see :func:`base_clicks`).
    clicks: np.ndarray | None = None
    #: Per input size, that click of each image in the letterboxed ground truth (what
    #: point models get), placed once for every cell (see :func:`placed_clicks`).
    placed: dict[int, np.ndarray] = field(default_factory=dict)

    def base_clicks(self) -> np.ndarray:
        if self.clicks is None:
            from ..data.clicks import eval_click

            self.clicks = np.array([eval_click(lab) for lab in self.labels], dtype=np.int64).reshape(-1, 2)
        return self.clicks

    def placed_clicks(self, size: int) -> np.ndarray:
        if size not in self.placed:
            self.placed[size] = letterbox_clicks(self.labels, size)
        return self.placed[size]


def applies(pert: PerturbationSpec | None, inputs) -> bool:
    """Whether a perturbation's cells exist for a model with these inputs: a click
    perturbation only for models with a ``point`` input, any other for every model."""
    return pert is None or not pert.acts_on_clicks or "point" in inputs


def run_sweep(job: SweepJob, progress: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or finish) a sweep into ``job.run_dir``; returns the run record (run.json, or
    a shard's record). Everything is checked before the first write, under the locks."""
    t_start = time.perf_counter()
    plan = job.plan
    plan.validate()
    pert_specs = perturbation_specs(plan)
    levels = levels_of(plan, pert_specs)
    ckpts = checkpoint_paths(plan.models, job.checkpoints_dir)
    test = prepare(job.data_root, "test", plan.void, job.cache_dir)
    if len(test) == 0:
        raise PetsegError(f"test split at {job.data_root} has no usable image")
    note_dropped(test, log)
    positions = limit_positions(np.arange(len(test)), plan.limit, plan.seed)
    ids = [test.names[int(p)] for p in positions]
    with run_lock(job.run_dir, plan.shard, RUN_FOLDERS, log), open_backend(job, log) as backend:
        record = merge_resume(job, base_record(plan, test.fingerprint, ids, ckpts, pert_specs, backend.runtime))
        record.update(code_version=code_version(), packages=package_versions(), hardware=backend.runtime["hardware"],
                      hardware_info=backend.runtime["hardware_info"], runtime=backend.runtime["runtime"],
                      started=record.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      **plan.extra)
        if plan.shard is not None:
            record["shard"] = plan.shard.to_dict()
        record["model_info"] = backend.load(sweep_source(job, ckpts, record), test)
        record["click_perturbations"] = [p for p, s in pert_specs.items() if s.acts_on_clicks]
        # The report groups by family; recorded so that a report re-rendered without the plugin still can.
        record["perturbation_families"] = {p: {"family": s.family, "label": s.family_label}
                                           for p, s in pert_specs.items() if s.family}
        note_click_skips(plan.models, record["click_perturbations"], log)
        write_run(job.record_dir, record)
        n_cells, compute_s = compute_cells(job, backend, levels, record, progress, log)
        record["cells_computed"] = n_cells
        record["image_levels_per_s"] = round(n_cells * len(ids) / compute_s, 2) if n_cells else None
        record["wall_seconds"] = round(time.perf_counter() - t_start + record.get("wall_seconds_before", 0.0), 1)
        record["wall_seconds_before"] = record["wall_seconds"]
        write_run(job.record_dir, record)
    return record


def sweep_source(job: SweepJob, ckpts: dict[str, Path], record: dict) -> SweepSource:
    plan = job.plan
    return SweepSource(tuple((m, str(p), record["checkpoints"][m]) for m, p in ckpts.items()), str(job.data_root),
                       None if job.cache_dir is None else str(job.cache_dir), plan.void, record["data_fingerprint"],
                       tuple(record["image_ids"]), tuple(plan.perturbations), plan.seed, plan.batch_size,
                       job.device, job.precision, plan.compile)


def note_click_skips(models: list[str], click_perts: list[str], log: Callable[[str], None]) -> None:
    skipped = [m for m in models if "point" not in get_registry().get("model", m).inputs]
    if click_perts and skipped:
        log(f"note: click perturbations ({', '.join(click_perts)}) are skipped for models "
            f"without a click input ({', '.join(skipped)}); the report shows n/a for them")


def runtime_facts(runtime: Runtime) -> dict:
    """What the run record says about the machine that computes the cells."""
    return {"precision": runtime.precision, "device": runtime.device_kind(), "runtime": runtime.describe(),
            "hardware": hardware(), "hardware_info": hardware_info()}


def load_sweep_data(src: SweepSource, test=None, runtime: Runtime | None = None) -> SweepData:
    """The images, labels and predictors every group of a sweep shares, loaded in this
    process; the test split and the checkpoints must be those the run recorded."""
    runtime = runtime or Runtime.choose(src.device, src.precision)
    if test is None:
        test = prepare(Path(src.data_root), "test", src.void, None if src.cache_dir is None else Path(src.cache_dir))
    if test.fingerprint != src.fingerprint:
        raise PetsegError(f"the test split at {src.data_root} is not the run's (fingerprint {test.fingerprint}, "
                          f"the run's is {src.fingerprint})")
    positions = test.index_of(list(src.ids))
    predictors = {}
    for m, path, sha in src.checkpoints:
        if file_sha256(Path(path)) != sha:
            raise PetsegError(f"checkpoint {path} is not the one the run recorded (sha256 {sha}); it changed meanwhile")
        predictors[m] = load_predictor(Path(path), runtime, expect_model=m)
        if src.compile:
            predictors[m].compile(src.batch_size)
    perts = {p: get_registry().get("perturbation", p) for p in src.perturbations}
    return SweepData([test.image(p) for p in positions], [test.label(p) for p in positions], list(src.ids),
                     predictors, perts, src.seed, src.batch_size)


def loaded_models(data: SweepData, src: SweepSource) -> dict[str, dict]:
    """The run record's ``model_info`` of the predictors a process loaded."""
    return {m: model_info(data.predictors[m], Path(path), sha) for m, path, sha in src.checkpoints}


class LocalBackend:
    """Every group in this process, one after another (each batch's data work on a
    background thread)."""

    def __init__(self, job: SweepJob):
        self.rt = Runtime.choose(job.device, job.precision)
        self.runtime = runtime_facts(self.rt)
        self.data: SweepData | None = None

    def __enter__(self) -> "LocalBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.data = None

    def load(self, src: SweepSource, test=None) -> dict[str, dict]:
        self.data = load_sweep_data(src, test, self.rt)
        return loaded_models(self.data, src)

    def run(self, todo: dict[tuple[str, int], list[str]], finish: Callable, bar=None) -> None:
        for (pert, level), models in todo.items():
            finish((pert, level), compute_group(self.data, pert, level, models, bar.update if bar else None))


def open_backend(job: SweepJob, log: Callable[[str], None]):
    """The backend that computes ``job``'s groups (a context manager)."""
    if job.backend == "ray":
        from .ray_backend import RayBackend

        return RayBackend(job, log)
    if job.backend != "local":
        raise PetsegError(f"--backend must be local or ray, got {job.backend!r}")
    return LocalBackend(job)


def compute_cells(job: SweepJob, backend, levels: dict[str, list[int]], record: dict, progress: bool,
                  log: Callable[[str], None]) -> tuple[int, float]:
    """Compute (on ``backend``) and write every unfinished cell of the job (of its shard);
    (cells computed, seconds). ``record["click_off_foreground"][pert][str(level)]`` gets,
    for a click perturbation, the share of images whose moved click is off the pet."""
    plan, specs, ids = job.plan, perturbation_specs(job.plan), record["image_ids"]
    keep = {m: (lambda p, ins=get_registry().get("model", m).inputs: applies(specs.get(p), ins)) for m in plan.models}
    owned = None if plan.shard is None else plan.shard.owned(all_groups(plan.perturbations, levels))
    todo, n_done = cells_left(plan, levels, job.run_dir, ids, keep, owned)
    n_cells = sum(len(v) for v in todo.values())
    if n_done:
        log(f"resume: {n_done} finished cells kept, {n_cells} to compute")
    if owned is not None and not owned:
        log(f"note: shard {plan.shard} has no group (the sweep has {len(all_groups(plan.perturbations, levels))})")
    bar = _bar(progress, n_cells * len(ids))
    clicks = record.setdefault("click_off_foreground", {})

    def finish(group: tuple[str, int], result: GroupResult) -> None:
        pert, level = group
        spec = specs.get(pert)
        if spec is not None and spec.acts_on_clicks:
            clicks.setdefault(pert, {})[str(level)] = result.click_share
        for m, cms in result.mats.items():
            write_cell(job.run_dir, Cell(m, pert, level), ids, cms, 0.0 if spec is None else spec.levels[level])

    t_compute = time.perf_counter()
    backend.run(todo, finish, bar)
    if bar is not None:
        bar.close()
    return n_cells, time.perf_counter() - t_compute


def compute_group(data: SweepData, pert: str, level: int, models: list[str], on_batch=None) -> GroupResult:
    """One (perturbation, level) group of ``models``: the clicks a click perturbation
    moves (at original resolution), then :func:`run_group`."""
    moves = share = None
    spec = data.perturbations.get(pert)
    if spec is not None and spec.acts_on_clicks:
        base, moved = perturb_clicks(spec, data.labels, level, data.ids, data.seed, data.base_clicks())
        moves = moved - base
        share = float(off_foreground(moved, data.labels).mean()) if len(moved) else None
    try:
        mats = run_group(data, pert, level, models, on_batch, moves)
    except ModelRunError as exc:
        raise exc.at(f"in cell ({pert}, level {level})") from None
    return GroupResult(mats, share)


def perturbation_specs(plan: SweepPlan) -> dict[str, PerturbationSpec]:
    reg = get_registry()
    return {p: reg.get("perturbation", p) for p in plan.perturbations}


def levels_of(plan: SweepPlan, specs: dict[str, PerturbationSpec]) -> dict[str, list[int]]:
    """The requested levels each perturbation has (perturbations may have fewer levels
    than others); a requested level that no perturbation has is an error."""
    out = {p: [lv for lv in plan.levels if lv < len(s.levels)] for p, s in specs.items()}
    missing = sorted(set(plan.levels) - {lv for lvs in out.values() for lv in lvs})
    if missing:
        most = max(len(s.levels) for s in specs.values()) - 1
        raise PetsegError(f"--levels: level {missing[0]} does not exist; the selected perturbations have levels 0..{most}")
    return out


def base_record(plan: SweepPlan, fingerprint: str, ids: list[str], ckpts: dict[str, Path],
                pert_specs: dict[str, PerturbationSpec], runtime: dict) -> dict:
    """The run record's keys that a resume must match (the runtime resolved, never "auto":
    ``runtime`` as :func:`runtime_facts` gives it)."""
    return {
        "models": plan.models, "perturbations": plan.perturbations, "levels": plan.levels, "seed": plan.seed,
        "limit": plan.limit, "void": plan.void, "image_ids": ids, "data_fingerprint": fingerprint,
        "checkpoints": {m: file_sha256(p) for m, p in ckpts.items()},
        # A plugin that changed its level values makes old cells stale.
        "perturbation_params": {p: {"param": s.param, "values": list(s.levels)} for p, s in pert_specs.items()},
        "precision": runtime["precision"], "device": runtime["device"], "batch_size": plan.batch_size,
        "compile": plan.compile,
    }


def merge_resume(job: SweepJob, record: dict) -> dict:
    """``record``, or the saved record updated by it when resuming the same configuration.
    Every other record in the run folder (the full run's, other shards') must have the
    same configuration too: they share the cells."""
    own = job.record_dir
    others = {str(d / RUN_FILE): read_run(d) for d in record_dirs(job.run_dir) if d != own}
    check_shard_counts(job.plan.shard, others)
    for where, saved in others.items():
        detail = config_diff(saved, record)
        if detail:
            raise PetsegError(f"{job.run_dir} holds a run made with another configuration ({where}: {detail}); "
                              f"choose another --out")
    if not (own / RUN_FILE).is_file():
        if others and job.plan.shard is None and not job.resume:
            raise PetsegError(f"{job.run_dir} already holds shards of a run; pass --resume to finish it, "
                              f"or choose another --out")
        return record
    saved = read_run(own)
    if not job.resume:
        what = "a run" if job.plan.shard is None else f"shard {job.plan.shard}"
        raise PetsegError(f"{job.run_dir} already holds {what}; pass --resume to finish it, or choose another --out")
    detail = config_diff(saved, record)
    if detail:
        raise PetsegError(f"--resume: {job.run_dir} was made with another configuration ({detail})")
    return {**saved, **record}


def record_dirs(run_dir: Path) -> list[Path]:
    """The folders holding a run record in ``run_dir``: itself (run.json) and its shards'."""
    own = [Path(run_dir)] if (Path(run_dir) / RUN_FILE).is_file() else []
    return own + shard_dirs(run_dir)


def config_diff(saved: dict, record: dict) -> str:
    """How ``saved`` differs from ``record`` in the keys a resume must match (up to three,
    each named), or "" when it does not."""
    old = {**_runtime_of_old_record(saved, record), **saved}
    diff = [k for k in RESUME_KEYS if _canonical(k, old.get(k)) != _canonical(k, record.get(k))]
    return "; ".join(_describe_diff(k, old.get(k), record.get(k)) for k in diff[:3])


def _runtime_of_old_record(saved: dict, record: dict) -> dict:
    """Precision and device of a run.json written before they were resume keys, read from
    its ``runtime`` line ("cpu (CPU, 2 threads, AVX2), fp32"): that line names the device
    type only, so only the type is compared."""
    text = saved.get("runtime")
    if not isinstance(text, str) or ", " not in text:
        return {}
    device = record["device"] if text.split(" ", 1)[0] == record["device"].split(" ", 1)[0] else text.split(" ", 1)[0]
    return {"precision": text.rsplit(", ", 1)[1], "device": device}


def model_info(pr: Predictor, path: Path, sha: str) -> dict:
    info = pr.info or {}
    return {"checkpoint": str(path), "sha256": sha, "backbone": info.get("backbone"), "encoder": info.get("encoder"),
            "eval_click_rule": info.get("eval_click_rule"), "in_size": pr.config.in_size,
            "base_channels": pr.config.base_channels, "train_config": info.get("train_config"),
            "train_data_fingerprint": info.get("data_fingerprint"), "val": info.get("val"), "epoch": info.get("epoch")}


def cells_left(plan: SweepPlan, levels: dict[str, list[int]], run_dir: Path, ids: list[str],
               keep: dict[str, Callable[[str], bool]] | None = None, groups: set[tuple[str, int]] | None = None
               ) -> tuple[dict[tuple[str, int], list[str]], int]:
    """Unfinished cells grouped by what they share (the perturbed pixels), and how many are done.
    ``keep[model](perturbation)`` false: that model has no such cells (a click
    perturbation for a model without clicks); ``groups``: only these (a shard's)."""
    todo: dict[tuple[str, int], list[str]] = defaultdict(list)
    n_done = 0
    for m in plan.models:
        perts = [p for p in plan.perturbations if keep is None or m not in keep or keep[m](p)]
        for cell in [Cell(m, CLEAN, 0)] + [Cell(m, p, lv) for p in perts for lv in levels[p]]:
            if groups is not None and (cell.perturbation, cell.level) not in groups:
                continue
            if read_cell(run_dir, cell, ids) is not None:
                n_done += 1
            else:
                todo[(cell.perturbation, cell.level)].append(m)
    return todo, n_done


def run_group(data: SweepData, pert: str, level: int, models: list[str], on_batch=None,
              moves: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Confusion matrices of every model in ``models`` on one (perturbation, level): each
    batch is perturbed once and letterboxed once per input size (on a background thread
    beside a GPU's forward, split over the threads between forwards on the CPU).
    ``moves``: per image (all of ``data``) the click displacement of a click perturbation."""
    chosen = {m: data.predictors[m] for m in models}
    sizes = {pr.config.in_size for pr in chosen.values()}
    clicks = any(pr.needs_clicks for pr in chosen.values())
    placed = {s: data.placed_clicks(s) for s in sizes} if clicks else {}

    def make(start: int):
        chunk = slice(start, start + data.batch_size)
        images, labels, ids = data.images[chunk], data.labels[chunk], data.ids[chunk]
        if pert != CLEAN:
            # each image draws from its own generator: any split gives the same pixels
            images = in_parallel(lambda lo, hi: perturb(data.perturbations[pert], images[lo:hi], level, ids[lo:hi],
                                                        data.seed), len(images))
        return make_batch(images, labels, sizes, clicks, None if moves is None else moves[chunk],
                          {s: p[chunk] for s, p in placed.items()})

    starts = list(range(0, len(data.images), data.batch_size))
    return inference_on_dataset(chosen, prefetch(make, starts, overlaps(chosen)), on_batch)


def _bar(progress: bool, total: int):
    if not progress or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="sweep", unit="img")


def _canonical(key: str, value):
    """Order does not matter for the model and perturbation lists."""
    return sorted(value) if key in ("models", "perturbations") and value is not None else value


def _describe_diff(key: str, old, new) -> str:
    if key in ("image_ids",):
        return f"image_ids: the test images differ ({len(old or [])} before, {len(new or [])} now)"
    if key == "checkpoints":
        changed = sorted(m for m in set(old or {}) | set(new or {}) if (old or {}).get(m) != (new or {}).get(m))
        return f"checkpoints: changed for {', '.join(changed)}"
    return f"{key}: {old!r} -> {new!r}"
