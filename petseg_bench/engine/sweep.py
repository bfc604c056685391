"""The robustness sweep engine: every model x perturbation x level, resumable.

Work is grouped by (perturbation, level): each batch of test images is perturbed once,
letterboxed once per input size, passed through each shared frozen backbone once, and then
fed to every model that still needs that cell; the evaluation clicks of point models are
placed once per sweep. On a GPU the next batch's perturbation and letterbox run in a
background thread while the models compute; on the CPU they run between forwards, the
images split over the forward's threads (see :mod:`.inference`). Finished cells are
written atomically; ``--resume`` skips them and recomputes anything unreadable.

This module runs a sweep; its parts live beside it: the plan and the job
(:mod:`.plan`), one group's computation (:mod:`.groups`, :func:`compute_group`), the
backends that run groups, one after another in this process or as Ray tasks
(:mod:`.backend`, :mod:`.ray_backend`), the run record and the resume rule
(:mod:`.sweep_record`), the folder's locks (:mod:`.lock`) and the shards (:mod:`.shard`):
a plan with a shard computes only that shard's groups. Whatever the backend, this
process alone writes the run folder.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.breeds import training_breeds
from ..data.cache import prepare, refuse_changed
from ..data.split import limit as limit_positions
from ..errors import PetsegError
from ..plugins import get_registry
from ..provenance import code_version, package_versions
from ..results import CLEAN, RUN_FILE, Cell, ModelInfo, RunRecord, odd_truth, read_cell, read_run, write_cell, write_run
from ..run_record import RESUME_KEYS  # noqa: F401 - importable here as before
from .backend import Backend, LocalBackend, open_backend  # noqa: F401 - importable here as before
from .dropped import note_dropped
from .groups import (GroupResult, SweepData, SweepSource, applies, compute_group,  # noqa: F401 - importable here
                     load_sweep_data, loaded_models, model_info, run_group, runtime_facts)  # noqa: F401
from .lock import RUN_FOLDERS
from .plan import SweepJob, SweepPlan, checkpoint_paths, levels_of, parse_levels, perturbation_specs  # noqa: F401
from .shard import all_groups, run_lock
from .sweep_record import add_perturbation_facts, base_record, merge_resume, record_dirs  # noqa: F401


def run_sweep(job: SweepJob, progress: bool = False, log: Callable[[str], None] = print) -> RunRecord:
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
    if job.resume and (job.record_dir / RUN_FILE).is_file():  # changed data: which files, not just the fingerprint
        refuse_changed(test, read_run(job.record_dir).data_fingerprint, f"--resume: {job.run_dir} was made")
    positions = limit_positions(np.arange(len(test)), plan.limit, plan.seed)
    ids = [test.names[int(p)] for p in positions]
    with run_lock(job.run_dir, plan.shard, RUN_FOLDERS, log), open_backend(job, log) as backend:
        record = merge_resume(job, base_record(plan, test.fingerprint, ids, ckpts, pert_specs, backend.runtime))
        record.set_runtime(backend.runtime, code_version(), package_versions(), _now())
        record.set_extras(plan.extra)
        if plan.shard is not None:
            record.shard = plan.shard.to_dict()
        infos = backend.load(sweep_source(job, ckpts, record), test)
        record.model_info = {m: ModelInfo.from_dict(info) for m, info in infos.items()}
        add_perturbation_facts(record, pert_specs)
        record.breed_groups = training_breeds(job.data_root).to_dict()  # the report's breed groups
        note_click_skips(plan.models, record.click_perturbations, log)
        write_run(job.record_dir, record)
        n_cells, compute_s = compute_cells(job, backend, levels, record, progress, log)
        record.finish(n_cells, len(ids), compute_s, time.perf_counter() - t_start, _now())
        write_run(job.record_dir, record)
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sweep_source(job: SweepJob, ckpts: dict[str, Path], record: RunRecord) -> SweepSource:
    plan = job.plan
    return SweepSource(checkpoints=tuple((m, str(p), record.checkpoints[m]) for m, p in ckpts.items()),
                       data_root=str(job.data_root), cache_dir=None if job.cache_dir is None else str(job.cache_dir),
                       void=plan.void, fingerprint=record.data_fingerprint, ids=tuple(record.image_ids),
                       perturbations=tuple(plan.perturbations), seed=plan.seed, batch_size=plan.batch_size,
                       device=job.device, precision=job.precision, compile=plan.compile)


def note_click_skips(models: list[str], click_perts: list[str], log: Callable[[str], None]) -> None:
    skipped = [m for m in models if "point" not in get_registry().get("model", m).inputs]
    if click_perts and skipped:
        log(f"note: click perturbations ({', '.join(click_perts)}) are skipped for models "
            f"without a click input ({', '.join(skipped)}); the report shows n/a for them")


def compute_cells(job: SweepJob, backend: Backend, levels: dict[str, list[int]], record: RunRecord, progress: bool,
                  log: Callable[[str], None]) -> tuple[int, float]:
    """Compute (on ``backend``) and write every unfinished cell of the job (of its shard);
    (cells computed, seconds). The record's ``click_off_foreground`` gets, for a click
    perturbation's level, the share of images whose moved click is off the pet."""
    plan, specs, ids = job.plan, perturbation_specs(job.plan), record.image_ids
    keep = {m: (lambda p, ins=get_registry().get("model", m).inputs: applies(specs.get(p), ins)) for m in plan.models}
    owned = None if plan.shard is None else plan.shard.owned(all_groups(plan.perturbations, levels))
    todo, n_done = cells_left(plan, levels, job.run_dir, ids, keep, owned)
    n_cells = sum(len(v) for v in todo.values())
    if n_done:
        log(f"resume: {n_done} finished cells kept, {n_cells} to compute")
    if owned is not None and not owned:
        log(f"note: shard {plan.shard} has no group (the sweep has {len(all_groups(plan.perturbations, levels))})")
    bar = _bar(progress, n_cells * len(ids))
    record.open_click_shares()

    def finish(group: tuple[str, int], result: GroupResult) -> None:
        pert, level = group
        spec = specs.get(pert)
        if spec is not None and spec.acts_on_clicks:
            record.add_click_share(pert, level, result.click_share)
        for m, cms in result.mats.items():
            write_cell(job.run_dir, Cell(m, pert, level), ids, cms, 0.0 if spec is None else spec.levels[level])

    t_compute = time.perf_counter()
    backend.run(todo, finish, bar)
    if bar is not None:
        bar.close()
    return n_cells, time.perf_counter() - t_compute


def cells_left(plan: SweepPlan, levels: dict[str, list[int]], run_dir: Path, ids: list[str],
               keep: dict[str, Callable[[str], bool]] | None = None, groups: set[tuple[str, int]] | None = None
               ) -> tuple[dict[tuple[str, int], list[str]], int]:
    """Unfinished cells grouped by what they share (the perturbed pixels), and how many are done.
    ``keep[model](perturbation)`` false: that model has no such cells (a click
    perturbation for a model without clicks); ``groups``: only these (a shard's)."""
    wanted: list[Cell] = []
    done: dict[Cell, np.ndarray] = {}
    for m in plan.models:
        perts = [p for p in plan.perturbations if keep is None or m not in keep or keep[m](p)]
        for cell in [Cell(m, CLEAN, 0)] + [Cell(m, p, lv) for p in perts for lv in levels[p]]:
            if groups is not None and (cell.perturbation, cell.level) not in groups:
                continue
            wanted.append(cell)
            got = read_cell(run_dir, cell, ids)
            if got is not None:
                done[cell] = got[1]
    # A cell whose images' ground truth differs from the other cells' was damaged (the
    # masks never change): recomputed like any unreadable one.
    odd = odd_truth(done, ids)
    while odd is not None:
        del done[odd[0]]
        odd = odd_truth(done, ids)
    todo: dict[tuple[str, int], list[str]] = defaultdict(list)
    for cell in wanted:
        if cell not in done:
            todo[(cell.perturbation, cell.level)].append(cell.model)
    return todo, len(done)


def _bar(progress: bool, total: int):
    if not progress or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="sweep", unit="img")
