"""Shards of one sweep, for any scheduler (Slurm arrays, Kubernetes indexed jobs...).

``run --shard I/N`` computes shard I (0 <= I < N) of the sweep's (perturbation, level)
groups: the groups in a fixed order (clean first, then perturbations by name, levels
ascending) dealt round-robin, so the split depends on the configuration only (never on
what is finished), every group lands in exactly one shard and the shards' sizes differ
by at most one group. The union of the N shards is the full run, cell for cell.

A shard writes its cells into ``OUT/cells`` like any run and its record to
``OUT/shards/I-of-N/run.json``, whose configuration carries ``"shard": {"index": I,
"count": N}``. Shards may share one folder and run at once: each holds the folder's lock
*shared* (a full ``run`` or a ``report`` there is refused meanwhile, and they refuse the
shards) and its own shard folder's lock exclusively (the same shard twice is refused).
Every shard checks the configuration of the records already in the folder before it
writes, so shards of another sweep cannot mix their cells into it. ``report`` merges the
shard records (of one folder, or of several: :mod:`.merge`).
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import PetsegError
from ..results import RunRecord, all_groups, owned_groups, shard_dir  # noqa: F401 - all_groups: the shards' order
from .lock import folder_lock

_SPEC = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def to_dict(self) -> dict:
        return {"index": self.index, "count": self.count}

    def folder(self, run_dir: Path) -> Path:
        return shard_dir(run_dir, self.index, self.count)

    def owned(self, groups: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """This shard's groups among all of a sweep's (see :func:`all_groups`)."""
        return owned_groups(groups, self.index, self.count)


def parse_shard(text: str | None) -> Shard | None:
    """``"I/N"`` -> Shard(I, N); one line naming what is wrong otherwise."""
    if text is None:
        return None
    m = _SPEC.match(text)
    if not m:
        raise PetsegError(f"--shard {text!r} is not I/N with whole numbers (e.g. 0/4, the first of four shards)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise PetsegError(f"--shard {text}: the shard count N must be at least 1")
    if not 0 <= index < count:
        raise PetsegError(f"--shard {text}: the index I must be within 0..{count - 1} (shards are numbered from 0)")
    return Shard(index, count)


@contextmanager
def run_lock(run_dir: Path, shard: Shard | None, scan: Sequence[str], log: Callable[[str], None] | None = None
             ) -> Iterator[Path]:
    """The locks a sweep holds: the run folder's exclusive lock, or for a shard the run
    folder's shared lock and its own shard folder's exclusive one."""
    if shard is None:
        with folder_lock(run_dir, scan, log):
            yield Path(run_dir)
        return
    with ExitStack() as stack:
        stack.enter_context(folder_lock(run_dir, scan, log, shared=True))
        stack.enter_context(folder_lock(shard.folder(run_dir), ("",), log))
        yield Path(run_dir)


def shard_of(record: RunRecord) -> Shard | None:
    """The shard a run record was made for (None: a full run, or a merged one)."""
    spec = record.shard
    if not isinstance(spec, dict):
        return None
    return Shard(int(spec.get("index", 0)), int(spec.get("count", 1)))


def check_shard_counts(mine: Shard | None, others: dict[str, RunRecord]) -> None:
    """Shards of one folder split the sweep the same way: one count N for all."""
    for where, rec in others.items():
        theirs = shard_of(rec)
        if mine is not None and theirs is not None and theirs.count != mine.count:
            raise PetsegError(f"--shard {mine}: {where} holds shard {theirs}, another split of the sweep "
                              f"(shard count {theirs.count}, not {mine.count}); use one shard count per folder")
