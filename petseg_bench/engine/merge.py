"""``report`` over shards: one run folder out of the shard records of one or more folders.

The shards of a sweep (``run --shard I/N``) may have written into one shared folder or
into one folder each. :func:`merge_runs` gathers their records (``shards/*/run.json``,
and a full run's ``run.json``), refuses records of another configuration (naming the
key that differs), another shard count or the same shard twice, says which shards are
missing, copies the cells of other folders into the destination and writes its
``run.json``: the union of the shards, which ``report`` and ``check`` then read like any
run. The merged record keeps each shard's facts under ``merged_from``, its wall time is
the span from the first shard's start to the last one's end (they may have run at once),
and the shards that are absent are named in ``missing_shards``.

Every record and every cell is checked before anything is written
(:func:`petseg_bench.results.read_run_folder`); a merge whose union lacks cells (a shard
absent or unfinished) is refused unless ``allow_partial``.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Callable

from ..errors import PetsegError
from ..results import (RUN_FILE, RunFolder, RunRecord, copy_cells, expected_cells, read_run, read_run_folder,
                       shard_dirs, write_run)
from .lock import RUN_FOLDERS, folder_lock
from .shard import shard_of


def merge_runs(sources: list[Path], dst: Path, log: Callable[[str], None] = print, allow_partial: bool = True,
               inputs=None) -> RunRecord | None:
    """Merge the shard records of ``sources`` into ``dst`` (hold ``dst``'s lock); returns
    the merged record, or None when there is nothing to merge (``dst`` itself, no shards).
    Nothing is written unless every record and cell is sound and, without
    ``allow_partial``, the union has every cell (``inputs``: see :func:`expected_cells`)."""
    from ..reporting.summary import _model_inputs, partial_line

    inputs = inputs or _model_inputs
    sources, dst = [Path(s) for s in sources], Path(dst)
    if len(sources) == 1 and not shard_dirs(sources[0]) and sources[0].resolve() == dst.resolve():
        return None
    with ExitStack() as stack:
        for src in sources:
            if src.resolve() != dst.resolve():  # not while a run or a shard still writes there
                stack.enter_context(folder_lock(src, RUN_FOLDERS))
        records = gather_records(sources)
        missing_shards = check_records(records)
        merged = merged_record(records)
        if missing_shards:
            merged.missing_shards = missing_shards
        merged.check(dst / RUN_FILE)
        folders = [read_run_folder(src, merged, inputs) for src in dict.fromkeys(s.resolve() for s in sources)]
        present = {c for f in folders for c in f.cells}
        union = RunFolder(dst, merged, {}, [c for c in expected_cells(merged, inputs) if c not in present])
        if union.missing and not allow_partial:
            raise PetsegError(partial_line(union))
        if missing_shards:
            log(f"warning: shard(s) {', '.join(missing_shards)} missing: their cells are absent")
        for src in dict.fromkeys(s.resolve() for s in sources):
            if src != dst.resolve():
                copy_cells(src, dst)
        write_run(dst, merged)
    log(f"merged {len(records)} run record(s) from {len(sources)} folder(s) into {dst / RUN_FILE}")
    return merged


def gather_records(sources: list[Path]) -> dict[str, RunRecord]:
    """Every run record of ``sources`` by where it lives: shard records, and a folder's
    run.json unless that is an earlier merge of the folder's own shards."""
    out: dict[str, RunRecord] = {}
    for src in sources:
        shards = shard_dirs(src)
        if (src / RUN_FILE).is_file():
            rec = read_run(src)
            if not (shards and rec.has("merged_from")):
                out[str(src / RUN_FILE)] = rec
        for d in shards:
            out[str(d / RUN_FILE)] = read_run(d)
        if not shards and not (src / RUN_FILE).is_file():
            read_run(src)  # the one-line "not a sweep run folder"
    return out


def check_records(records: dict[str, RunRecord]) -> list[str]:
    """Refuse what cannot be one run; return which shards are missing."""
    (first_at, first), *rest = records.items()
    for where, rec in rest:
        detail = first.resume_conflict(rec)
        if detail:
            raise PetsegError(f"report: {where} was made with another configuration than {first_at} ({detail})")
    shards = {where: shard_of(rec) for where, rec in records.items() if shard_of(rec) is not None}
    counts = sorted({s.count for s in shards.values()})
    if len(counts) > 1:
        raise PetsegError(f"report: the shards split the sweep differently (shard counts {', '.join(map(str, counts))}); "
                          f"merge the shards of one split")
    seen: dict[int, str] = {}
    for where, s in shards.items():
        if s.index in seen:
            raise PetsegError(f"report: shard {s} is there twice ({seen[s.index]} and {where}); give each shard once")
        seen[s.index] = where
    missing = [f"{i}/{counts[0]}" for i in range(counts[0]) if i not in seen] if counts else []
    return missing if len(shards) == len(records) else []


def merged_record(records: dict[str, RunRecord]) -> RunRecord:
    """One run record for the union: the shared configuration and provenance (distinct
    runtimes and machines joined), cells summed, the wall time from the first start to
    the last end (:func:`span_seconds`), each shard under ``merged_from``."""
    recs = list(records.values())
    merged = recs[0].copy()
    merged.drop("shard", "wall_seconds_before", "missing_shards")
    merged.runtime = _joined(r.runtime for r in recs)
    merged.hardware = _joined(r.hardware for r in recs)
    merged.code_version = _joined(r.code_version for r in recs)
    merged.started = min((r.started for r in recs if r.started), default=None)
    merged.cells_computed = sum(int(r.cells_computed or 0) for r in recs)
    merged.wall_seconds = span_seconds(recs)
    ends = [r.finished for r in recs if r.finished]
    if merged.has("finished") or ends:
        merged.finished = max(ends, key=lambda t: _time(t) or 0) if len(ends) == len(recs) else None
    work = [(r.cells_computed * len(r.image_ids), r.image_levels_per_s) for r in recs
            if r.cells_computed and r.image_levels_per_s]
    merged.image_levels_per_s = round(sum(n for n, _ in work) / sum(n / v for n, v in work), 2) if work else None
    merged.click_off_foreground = {}
    for r in recs:
        for pert, levels in r.click_off_foreground.items():
            merged.click_off_foreground.setdefault(pert, {}).update(levels)
    merged.merged_from = [{"record": where, "shard": r.shard, "cells_computed": r.cells_computed,
                           "wall_seconds": r.wall_seconds, "runtime": r.runtime, "hardware": r.hardware,
                           "started": r.started, "finished": r.finished}
                          for where, r in records.items()]
    return merged


def _joined(values) -> str:
    """Distinct non-empty values, in order, joined by "; "."""
    return "; ".join(dict.fromkeys(str(v) for v in values if v))


def span_seconds(recs: list[RunRecord]) -> float | None:
    """Seconds from the first record's start to the last one's end (its ``finished``, else
    its start plus its wall time): shards that ran at once took the longest one's time,
    not the sum. None when no record says when it started."""
    spans = []
    for r in recs:
        start = _time(r.started)
        if start is None:
            continue
        end = _time(r.finished)
        if end is None:
            end = start + float(r.wall_seconds or 0)
        spans.append((start, end))
    if not spans:
        return None
    return round(max(e for _, e in spans) - min(s for s, _ in spans), 1)


def _time(text) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None
    except ValueError:
        return None
