"""The run record a sweep writes (``run.json``, or a shard's): its configuration, and
the resume rule against the records already in the run folder. The record itself and
the rule's keys are :class:`~petseg_bench.run_record.RunRecord`'s; this module only
builds it from a plan and checks it against the folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PetsegError
from ..provenance import file_sha256
from ..results import RUN_FILE, RunRecord, read_run, shard_dirs
from ..run_record import RuntimeFacts
from ..specs import PerturbationSpec
from .shard import check_shard_counts

if TYPE_CHECKING:
    from .plan import SweepJob, SweepPlan


def base_record(plan: SweepPlan, fingerprint: str, ids: list[str], ckpts: dict[str, Path],
                pert_specs: dict[str, PerturbationSpec], runtime: RuntimeFacts) -> RunRecord:
    """The run record's keys that a resume must match (the runtime resolved, never "auto":
    ``runtime`` as :func:`~.groups.runtime_facts` gives it)."""
    return RunRecord.new(
        models=plan.models, perturbations=plan.perturbations, levels=plan.levels, seed=plan.seed,
        limit=plan.limit, void=plan.void, image_ids=ids, data_fingerprint=fingerprint,
        checkpoints={m: file_sha256(p) for m, p in ckpts.items()},
        # A plugin that changed its level values makes old cells stale.
        perturbation_params={p: {"param": s.param, "values": list(s.levels)} for p, s in pert_specs.items()},
        precision=runtime.precision, device=runtime.device, batch_size=plan.batch_size, compile=plan.compile,
    )


def merge_resume(job: SweepJob, record: RunRecord) -> RunRecord:
    """``record``, or the saved record updated by it when resuming the same configuration.
    Every other record in the run folder (the full run's, other shards') must have the
    same configuration too: they share the cells."""
    own = job.record_dir
    others = {str(d / RUN_FILE): read_run(d) for d in record_dirs(job.run_dir) if d != own}
    check_shard_counts(job.plan.shard, others)
    for where, saved in others.items():
        detail = saved.resume_conflict(record)
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
    detail = saved.resume_conflict(record)
    if detail:
        raise PetsegError(f"--resume: {job.run_dir} was made with another configuration ({detail})")
    return saved.updated_by(record)


def record_dirs(run_dir: Path) -> list[Path]:
    """The folders holding a run record in ``run_dir``: itself (run.json) and its shards'."""
    own = [Path(run_dir)] if (Path(run_dir) / RUN_FILE).is_file() else []
    return own + shard_dirs(run_dir)


def add_perturbation_facts(record: RunRecord, pert_specs: dict[str, PerturbationSpec]) -> None:
    """What the report needs to know of the perturbations without their plugins: which
    move clicks, which attack each model (kept apart from the corruptions), their families."""
    record.click_perturbations = [p for p, s in pert_specs.items() if s.acts_on_clicks]
    attacks = [p for p, s in pert_specs.items() if s.acts_on_model]
    if attacks:
        record.set("model_perturbations", attacks)
    # The report groups by family; recorded so that a report re-rendered without the plugin still can.
    record.perturbation_families = {p: {"family": s.family, "label": s.family_label}
                                    for p, s in pert_specs.items() if s.family}
