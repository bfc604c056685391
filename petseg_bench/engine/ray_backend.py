"""``run --backend ray``: the sweep's (perturbation, level) groups as Ray tasks.

This process does everything it does for a local sweep (checks, locks, run.json, every
cell write, so ``--resume``, ``report`` and ``check`` see the same folder); only the
groups run elsewhere: one Ray task per group, computed by the engine's own
:func:`~.groups.compute_group`. A worker process loads the models, their backbones and
the test split once (:func:`~.groups.load_sweep_data`, cached by the sweep's
:class:`~.groups.SweepSource`) and keeps them for every later group it gets.
:class:`RayBackend` is a :class:`~.backend.Backend`: the sweep calls it as it calls the
local one, and this module needs nothing of the sweep but :mod:`.groups`. A task
returns its confusion matrices; the cells are written here, atomically, as tasks finish.

A worker that dies mid-task (killed, out of memory, its node lost) costs only its
group: Ray runs the task again (:data:`RETRIES` times), and since nothing of a group is
written before it has come back whole, no cell is lost or written twice. Workers need
the package, the data and the checkpoints at the same paths as this process (a shared
file system), and compute on one kind of device: every group reports where it ran, and
a group computed on another kind than the run records stops the sweep.

Ray is optional (``pip install 'petseg-bench[ray]'``). Without ``--address`` a local
Ray is started (and stopped), its workers at the niceness ``--ray-niceness`` gives
(default 0, this process's own priority: Ray's default of +15 made the sweep 14x slower
on a machine with other work); an ``--address`` that does not answer is one line within
:data:`CONNECT_TIMEOUT_S` seconds, never a hang. A Ray that this process already runs
(``ray.init`` by a caller) is used as it is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import PetsegError, one_line, os_error_text

if TYPE_CHECKING:  # the groups (and torch) load when a backend starts, not for check_address
    from ..run_record import RuntimeFacts
    from .groups import GroupResult, SweepData, SweepSource
    from .plan import SweepJob

INSTALL = "pip install 'petseg-bench[ray]'"
#: How often Ray runs a group again whose worker died.
RETRIES = 3
#: An --address must answer a TCP connection within this, then a Ray connection (in a
#: probe process) within the rest of :data:`CONNECT_TIMEOUT_S`.
TCP_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 20.0
#: Addresses this process has found a Ray cluster at.
_reachable: set[str] = set()
#: Environment the workers of an existing cluster get from this process.
PASSED_ENV = ("PETSEG_CACHE", "HF_HUB_OFFLINE", "NO_ALBUMENTATIONS_UPDATE")
PROBE = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); ray.cluster_resources(); ray.shutdown()"
#: Ray's own setting of its workers' niceness (an increment on the raylet's), read from
#: the environment by the raylet that ``ray.init`` starts.
NICENESS_ENV = "RAY_worker_niceness"


def import_ray():
    try:
        import ray
    except ImportError:
        raise PetsegError(f"--backend ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class RayBackend:
    """Groups as Ray tasks (see the module's docstring); a context manager."""

    def __init__(self, job: SweepJob, log: Callable[[str], None]):
        self.ray = import_ray()
        self.job, self.log, self.source = job, log, None
        self.owns = connect(self.ray, job.address, job.ray_niceness)
        try:
            self.gpus = gpus_per_task(self.ray, job.device)
            self.runtime = self.call(runtime_on_worker, job.device, job.precision, what="probing a Ray worker")
        except BaseException:
            self.close()
            raise
        nodes = len([n for n in self.ray.nodes() if n.get("Alive")])
        log(f"ray: {nodes} node(s), {self.ray.cluster_resources().get('CPU', 0):g} CPUs; a group task takes "
            f"{job.cpus_per_task} CPU(s){' and 1 GPU' if self.gpus else ''}; workers compute on {self.runtime.runtime}")

    def __enter__(self) -> "RayBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()
        self.owns = False

    def remote(self, fn):
        return self.ray.remote(num_cpus=self.job.cpus_per_task, num_gpus=self.gpus, max_retries=RETRIES)(fn)

    def call(self, fn, *args, what: str):
        return self.get(self.remote(fn).remote(*args), what)

    def load(self, src: SweepSource, test=None) -> dict[str, dict]:  # noqa: ARG002 - workers read their own
        self.source = self.ray.put(src)
        return self.call(load_on_worker, self.source, self.job.cpus_per_task, what="loading the models on a Ray worker")

    def run(self, todo: dict[tuple[str, int], list[str]], finish: Callable, bar=None) -> None:
        task = self.remote(group_on_worker)
        pending = {task.remote(self.source, self.job.cpus_per_task, pert, level, models): (pert, level)
                   for (pert, level), models in todo.items()}
        try:
            while pending:
                ready, _ = self.ray.wait(list(pending), num_returns=1)
                group = pending.pop(ready[0])
                result = self.get(ready[0], f"group ({group[0]}, level {group[1]})")
                self.check_runtime(result, group)
                finish(group, result)
                if bar is not None:
                    bar.update(sum(len(m) for m in result.mats.values()))
        finally:
            for ref in pending:  # leaving early (an error, Ctrl-C): the rest is not wanted
                try:
                    self.ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort
                    pass

    def get(self, ref, what: str):
        """The task's result, or one line: the task's own error, or its worker lost for good."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, PetsegError):
                raise cause from None
            name = type(cause).__name__ if cause is not None else "error"
            raise PetsegError(f"{what} failed on a Ray worker: {name}: {one_line(cause or exc)}") from None
        except ray.exceptions.RayError as exc:
            raise PetsegError(f"{what}: its Ray worker was lost {RETRIES + 1} times ({type(exc).__name__}: "
                              f"{one_line(exc, 160)}); finished cells are kept: continue with --resume") from None

    def check_runtime(self, result: GroupResult, group: tuple[str, int]) -> None:
        want = (self.runtime.device, self.runtime.precision)
        if result.runtime is not None and tuple(result.runtime) != want:
            raise PetsegError(f"group ({group[0]}, level {group[1]}) ran on {', '.join(result.runtime)}, not "
                              f"{', '.join(want)} as the run records: one sweep needs one kind of machine "
                              f"(run one --shard per kind)")


def connect(ray, address: str | None, niceness: int = 0) -> bool:
    """Connect to (or start) Ray; True when this call did (and so shuts it down). A local
    Ray's workers run at ``niceness`` above this process (a cluster's, at what its nodes
    were started with)."""
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        kwargs = {"address": address, "runtime_env": {"env_vars": env} if env else None}
    else:
        kwargs = {"include_dashboard": False}
    try:
        with environment(NICENESS_ENV, None if address else str(niceness)):
            ray.init(log_to_driver=False, logging_level="ERROR", **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds
        where = f"--address {address}" if address else "starting a local Ray"
        raise PetsegError(f"{where}: {type(exc).__name__}: {one_line(exc, 200)}") from None
    return True


@contextmanager
def environment(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` while the block runs (nothing changed for None)."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def check_address(address: str | None) -> None:
    """Before anything else: Ray is installed and, with an ``address``, a cluster answers there."""
    import_ray()
    if address:
        check_reachable(address)


def check_reachable(address: str) -> None:
    """One line, within :data:`CONNECT_TIMEOUT_S` seconds, when no Ray cluster answers at
    ``address`` (``ray.init`` itself would wait for minutes)."""
    if address == "auto" or address in _reachable:
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise PetsegError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=TCP_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else os_error_text(exc)
        raise PetsegError(f"--address {address}: nothing answers there ({reason}); start a cluster with "
                          f"`ray start --head` or check the address") from None
    probe_cluster(address)


def probe_cluster(address: str) -> None:
    """Join the cluster at ``address`` from a throw-away process, within the time left."""
    env = {"RAY_gcs_server_port_wait_time_s": "5", **os.environ}  # Ray's own retries: 5 s, not 20
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, address], capture_output=True, text=True, env=env,
                              timeout=CONNECT_TIMEOUT_S - TCP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PetsegError(f"--address {address}: something answers there, but no Ray cluster within "
                          f"{CONNECT_TIMEOUT_S - TCP_TIMEOUT_S:g} s") from None
    if done.returncode == 0:
        _reachable.add(address)
        return
    if "InvalidAuthToken" in done.stderr and os.environ.get("RAY_AUTH_MODE") != "token":
        raise PetsegError(f"--address {address}: the cluster wants its authentication token: "
                          f"export RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token or $RAY_AUTH_TOKEN)")
    lines = [ln.strip() for ln in done.stderr.splitlines() if "Error" in ln]
    raise PetsegError(f"--address {address}: not a Ray cluster this process can join "
                      f"({one_line(Exception(lines[-1] if lines else 'no message'), 200)})")


def gpus_per_task(ray, device: str) -> int:
    if device.startswith("cuda"):
        return 1
    return 1 if device == "auto" and ray.cluster_resources().get("GPU", 0) > 0 else 0


# --- on the workers -----------------------------------------------------------------

_loaded: dict[SweepSource, SweepData] = {}


def worker_data(src: SweepSource, cpus: int) -> SweepData:
    """The sweep's shared data in this worker process, loaded on its first task."""
    import torch

    from .groups import load_sweep_data

    torch.set_num_threads(max(1, cpus))
    if src not in _loaded:
        _loaded.clear()  # one sweep at a time per worker
        _loaded[src] = load_sweep_data(src)
    return _loaded[src]


def runtime_on_worker(device: str, precision: str) -> RuntimeFacts:
    from .groups import runtime_facts
    from .runtime import Runtime

    return runtime_facts(Runtime.choose(device, precision))


def load_on_worker(src: SweepSource, cpus: int) -> dict[str, dict]:
    from .groups import loaded_models

    return loaded_models(worker_data(src, cpus), src)


def group_on_worker(src: SweepSource, cpus: int, pert: str, level: int, models: list[str]) -> GroupResult:
    from .groups import compute_group

    data = worker_data(src, cpus)
    result = compute_group(data, pert, level, models)
    rt = next(iter(data.predictors.values())).runtime
    result.runtime = (rt.device_kind(), rt.precision)
    return result
