"""Where a sweep's groups are computed: the :class:`Backend` protocol the sweep calls,
:class:`LocalBackend` (every group in this process) and :func:`open_backend`, which
picks it or the Ray backend (:mod:`.ray_backend`). A backend computes groups and hands
each result to the sweep's ``finish``; only the sweep writes the run folder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from ..errors import PetsegError
from ..run_record import RuntimeFacts
from .groups import GroupResult, SweepData, SweepSource, compute_group, load_sweep_data, loaded_models, runtime_facts
from .runtime import Runtime

if TYPE_CHECKING:
    from .plan import SweepJob

#: The groups left to compute: (perturbation, level) -> the models that still need it.
Todo = dict[tuple[str, int], list[str]]
#: What the sweep does with a group's result: ``finish((perturbation, level), result)``.
Finish = Callable[[tuple[str, int], GroupResult], None]


@runtime_checkable
class Backend(Protocol):
    """What the sweep asks of a backend (a context manager: ``__exit__`` frees what it holds)."""

    #: The machine that computes the groups, as the run record states it.
    runtime: RuntimeFacts

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc) -> None: ...

    def load(self, src: SweepSource, test=None) -> dict[str, dict]:
        """Load what the groups share; the run record's ``model_info`` of the models."""
        ...

    def run(self, todo: Todo, finish: Finish, bar=None) -> None:
        """Compute every group of ``todo``, calling ``finish`` with each as it is done
        (and ``bar.update(images)`` as they progress)."""
        ...


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

    def run(self, todo: Todo, finish: Finish, bar=None) -> None:
        for (pert, level), models in todo.items():
            finish((pert, level), compute_group(self.data, pert, level, models, bar.update if bar else None))


def open_backend(job: SweepJob, log: Callable[[str], None]) -> Backend:
    """The backend that computes ``job``'s groups (a context manager)."""
    if job.backend == "ray":
        from .ray_backend import RayBackend

        return RayBackend(job, log)
    if job.backend != "local":
        raise PetsegError(f"--backend must be local or ray, got {job.backend!r}")
    return LocalBackend(job)
