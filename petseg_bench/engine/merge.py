"""``report`` over shards: one run folder out of the shard records of one or more folders.

The shards of a sweep (``run --shard I/N``) may have written into one shared folder or
into one folder each. :func:`merge_runs` gathers their records (``shards/*/run.json``,
and a full run's ``run.json``), refuses records of another configuration (naming the
key that differs), another shard count or the same shard twice, says which shards are
missing, copies the cells of other folders into the destination and writes its
``run.json``: the union of the shards, which ``report`` and ``check`` then read like any
run. The merged record keeps each shard's facts under ``merged_from``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from ..errors import PetsegError
from ..results import RUN_FILE, copy_cells, read_run, shard_dirs, write_run
from .lock import folder_lock
from .shard import shard_of
from .sweep import RUN_FOLDERS, config_diff


def merge_runs(sources: list[Path], dst: Path, log: Callable[[str], None] = print) -> dict | None:
    """Merge the shard records of ``sources`` into ``dst`` (hold ``dst``'s lock); returns
    the merged record, or None when there is nothing to merge (``dst`` itself, no shards)."""
    sources, dst = [Path(s) for s in sources], Path(dst)
    if len(sources) == 1 and not shard_dirs(sources[0]) and sources[0].resolve() == dst.resolve():
        return None
    with ExitStack() as stack:
        for src in sources:
            if src.resolve() != dst.resolve():  # not while a run or a shard still writes there
                stack.enter_context(folder_lock(src, RUN_FOLDERS))
        records = gather_records(sources)
        check_records(records, log)
        for src in dict.fromkeys(s.resolve() for s in sources):
            if src != dst.resolve():
                copy_cells(src, dst)
        merged = merged_record(records)
        write_run(dst, merged)
    log(f"merged {len(records)} run record(s) from {len(sources)} folder(s) into {dst / RUN_FILE}")
    return merged


def gather_records(sources: list[Path]) -> dict[str, dict]:
    """Every run record of ``sources`` by where it lives: shard records, and a folder's
    run.json unless that is an earlier merge of the folder's own shards."""
    out: dict[str, dict] = {}
    for src in sources:
        shards = shard_dirs(src)
        if (src / RUN_FILE).is_file():
            rec = read_run(src)
            if not (shards and "merged_from" in rec):
                out[str(src / RUN_FILE)] = rec
        for d in shards:
            out[str(d / RUN_FILE)] = read_run(d)
        if not shards and not (src / RUN_FILE).is_file():
            read_run(src)  # the one-line "not a sweep run folder"
    return out


def check_records(records: dict[str, dict], log: Callable[[str], None]) -> None:
    """Refuse what cannot be one run; say which shards are missing."""
    (first_at, first), *rest = records.items()
    for where, rec in rest:
        detail = config_diff(first, rec)
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
    if missing and len(shards) == len(records):
        log(f"warning: shard(s) {', '.join(missing)} missing: their cells are absent from the report")


def merged_record(records: dict[str, dict]) -> dict:
    """One run record for the union: the shared configuration and provenance (distinct
    runtimes and machines joined), cells and seconds summed, each shard under ``merged_from``."""
    recs = list(records.values())
    merged = {k: v for k, v in recs[0].items() if k not in ("shard", "wall_seconds_before")}
    for key in ("runtime", "hardware", "code_version"):
        merged[key] = "; ".join(dict.fromkeys(str(r.get(key)) for r in recs if r.get(key)))
    merged["started"] = min((r["started"] for r in recs if r.get("started")), default=None)
    merged["cells_computed"] = sum(int(r.get("cells_computed") or 0) for r in recs)
    merged["wall_seconds"] = round(sum(float(r.get("wall_seconds") or 0) for r in recs), 1)
    work = [(r["cells_computed"] * len(r.get("image_ids") or []), r.get("image_levels_per_s")) for r in recs
            if r.get("cells_computed") and r.get("image_levels_per_s")]
    merged["image_levels_per_s"] = round(sum(n for n, _ in work) / sum(n / v for n, v in work), 2) if work else None
    merged["click_off_foreground"] = {}
    for r in recs:
        for pert, levels in (r.get("click_off_foreground") or {}).items():
            merged["click_off_foreground"].setdefault(pert, {}).update(levels)
    merged["merged_from"] = [{"record": where, "shard": r.get("shard"), "cells_computed": r.get("cells_computed"),
                              "wall_seconds": r.get("wall_seconds"), "runtime": r.get("runtime"),
                              "hardware": r.get("hardware"), "started": r.get("started")}
                             for where, r in records.items()]
    return merged
