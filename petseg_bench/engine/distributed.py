"""Training on several processes: ``torchrun --nproc-per-node N petseg-bench train ...``.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) :func:`init_from_env` joins the
process group (gloo on the CPU, NCCL on CUDA, each rank on GPU ``LOCAL_RANK``) and the
one training loop runs data-parallel with DDP; nothing else changes:

* ``--batch-size`` stays the *global* batch: every rank takes an equal, contiguous slice
  of each global batch (:class:`EpochBatches`), whose order is exactly the one a single
  process draws; each image keeps its per-(seed, epoch, image) augmentation, so the
  data of a step is the same whatever the number of processes. The training config, and
  so a checkpoint, does not depend on it: ``--resume`` works with any number.
* The loss is the global batch's (:mod:`.losses` sums its statistics over the ranks), and
  DDP averages the ranks' shares of its gradient, so all ranks keep identical weights and
  a step's gradient is the single process's; the BatchNorm buffers of rank 0 are given
  to all after each epoch. What still differs from one process: each rank normalises
  its slice with its own BatchNorm batch statistics (and sums run in another order).
* Validation is split over the ranks and its per-image confusion counts gathered, so
  every rank sees the same (exact) validation figures and takes the same decisions.
* Rank 0 alone takes the output folder's lock, writes checkpoints and metrics.jsonl, and
  logs; a failure in the set-up of any rank stops every rank with that rank's line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from ..data.datasets import sample_seed
from ..errors import PetsegError, one_line
from .runtime import Runtime

T = TypeVar("T")
#: How long a rank waits for the others at a collective before it gives up.
TIMEOUT = timedelta(minutes=30)


@dataclass
class Dist:
    """This process's place in the job; the defaults are a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process joined the group (and leaves it in close())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def runtime(self, rt: Runtime) -> Runtime:
        """One GPU per rank (``LOCAL_RANK``); the CPU is shared."""
        if self.active and rt.device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return Runtime(torch.device("cuda", self.local_rank), rt.precision)
        return rt

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise PetsegError(f"--batch-size {global_batch} (the global batch) does not split evenly over "
                              f"{self.world} processes: use a multiple of {self.world}")
        return global_batch // self.world

    def split(self, items: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of ``items`` (for work whose results are gathered)."""
        return np.array_split(np.asarray(items), self.world)[self.rank] if self.active else np.asarray(items)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Every rank's ``rows`` concatenated in rank order (the inverse of :meth:`split`)."""
        if not self.active:
            return rows
        parts: list = [None] * self.world
        tdist.all_gather_object(parts, np.asarray(rows))
        return np.concatenate(parts)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the ranks (detached)."""
        t = t.detach().clone()
        if self.active:
            tdist.all_reduce(t)
        return t

    def sum(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        tdist.all_reduce(t)
        return t.tolist()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` for the training forward: DDP-wrapped when data-parallel."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(model.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        # A static graph: the parameters a model uses (or leaves unused, as a phase may) are
        # the same at every step of a phase, and the model is wrapped again per phase.
        return DDP(model, device_ids=ids, static_graph=True)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if self.active:
            for buf in model.buffers():
                tdist.broadcast(buf, 0)

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; if it fails on any, every rank raises that failure (so
        no rank waits forever for one that stopped)."""
        try:
            result, error = fn(), None
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised
            result, error = None, exc
        if not self.active:
            if error is not None:
                raise error
            return result
        lines: list = [None] * self.world
        tdist.all_gather_object(lines, None if error is None else one_line(error, 400))
        if error is not None:
            raise error
        bad = next(((r, line) for r, line in enumerate(lines) if line is not None), None)
        if bad is not None:
            raise PetsegError(f"rank {bad[0]}: {bad[1]}")
        return result

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def close(self) -> None:
        if self.owned and tdist.is_initialized():
            tdist.destroy_process_group()
        self.owned = False


def init_from_env(device: str = "auto") -> Dist:
    """The process group torchrun describes in the environment (joined here unless the
    caller already did), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), local, owned=False)
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise PetsegError(f"WORLD_SIZE is {world} but MASTER_ADDR/MASTER_PORT are not set: start several "
                          f"processes with torchrun --nproc-per-node N")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    tdist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=TIMEOUT)
    return Dist(rank, world, local, owned=True)


class EpochBatches:
    """The batches of one epoch for one rank: the global order a single process draws
    (``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))``, which
    first draws its workers' base seed from the generator, then the permutation), each
    global batch cut into ``world`` equal contiguous slices."""

    def __init__(self, n: int, global_batch: int, seed: int, drop_last: bool, dist: Dist | None = None):
        self.n, self.batch, self.seed, self.drop_last = n, global_batch, seed, drop_last
        self.dist = dist or Dist()
        last = n % global_batch or global_batch
        if self.dist.active and not drop_last and last < self.dist.world:
            raise PetsegError(f"{n} training images leave a batch of {last} for {self.dist.world} processes: "
                              f"train on more images or with fewer processes")

    def global_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's base seed
        order = torch.randperm(self.n, generator=g).tolist()
        out = [order[k:k + self.batch] for k in range(0, self.n, self.batch)]
        return [b for b in out if len(b) == self.batch] if self.drop_last else out

    def __iter__(self) -> Iterator[list[int]]:
        d = self.dist
        for b in self.global_batches():
            yield [int(i) for i in np.array_split(np.asarray(b), d.world)[d.rank]]

    def __len__(self) -> int:
        return self.n // self.batch if self.drop_last else -(-self.n // self.batch)


def epoch_seed(seed: int, epoch: int, what: int, dist: Dist | None = None) -> int:
    """Per-epoch seeds of the loop (``what``: 1 dropout and friends, 2 the order); rank 0
    draws what a single process draws, other ranks their own dropout."""
    rank = (dist or Dist()).rank if what == 1 else 0
    return sample_seed(seed, epoch, what, *((rank,) if rank else ()))
