"""What a sweep is asked to do: :class:`SweepPlan` (models, perturbations, levels...) and
:class:`SweepJob` (the plan, where its checkpoints, data and results live, and which
backend runs it), with the checks that resolve them before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_seed
from ..errors import PetsegError
from ..plugins import get_registry
from ..specs import PerturbationSpec
from .shard import Shard


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
    from ..plugins import checkpoint_path

    paths = {m: checkpoint_path(m, checkpoints_dir) for m in models}  # DIR/<folder>/best.pt, or a model file
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


@dataclass(kw_only=True)
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
    ray_niceness: int = 0  # Ray: the niceness of a local Ray's workers (Ray's own default is 15)

    @property
    def record_dir(self) -> Path:
        """Where this job's run.json goes: the run folder, or its shard's folder."""
        return Path(self.run_dir) if self.plan.shard is None else self.plan.shard.folder(self.run_dir)


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
        raise PetsegError(f"--levels: level {missing[0]} does not exist; the selected perturbations have "
                          f"levels 0..{most}")
    return out
