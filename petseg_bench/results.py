"""A sweep's run folder on disk: ``run.json`` (what was run) and the cells (per-image results).

This module is the one owner of the folder's layout: the sweep writes through it, the
report and ``check`` read through it.

A cell is (model, perturbation, level). Level 0 is the clean image, stored once per
model as ``cells/<model>/clean.parquet`` and shared by every perturbation. Other cells
are ``cells/<model>/<perturbation>-L<level>.parquet``. Each row is one test image:
its id, the nine confusion counts ``cm_t_p`` (truth t, prediction p) and which classes
its ground truth contains.

A shard of a sweep (``run --shard I/N``) writes its cells into the same ``cells/`` and
its record to ``shards/<I>-of-<N>/run.json``, so several shards can share one folder;
``report`` merges the shard records into ``run.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import write_bytes_atomic, write_json_atomic
from .errors import PetsegError
from .labels import CLASS_NAMES, N_CLASSES

RUN_FILE = "run.json"
SHARDS_DIR = "shards"
CLEAN = "clean"
CM_COLUMNS = [f"cm_{t}_{p}" for t in range(N_CLASSES) for p in range(N_CLASSES)]
PRESENT_COLUMNS = [f"has_{c}" for c in CLASS_NAMES]


def read_run(run_dir: Path) -> dict:
    """The run record of ``run_dir``; one clear line when it is missing or malformed."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        if shard_dirs(run_dir):
            raise PetsegError(f"no {RUN_FILE} in {run_dir}, only shard records: merge them with "
                              f"`petseg-bench report {run_dir}`")
        raise PetsegError(f"no {RUN_FILE} in {run_dir}: not a sweep run folder (make one with `petseg-bench run`)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PetsegError(f"{path} is unreadable: {exc}") from None
    if not isinstance(record, dict):
        raise PetsegError(f"{path} is not a run record (a JSON object); it holds {type(record).__name__}")
    return record


def write_run(run_dir: Path, record: dict) -> None:
    write_json_atomic(Path(run_dir) / RUN_FILE, record)


def shard_dir(run_dir: Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` keeps its record (and its lock) in ``run_dir``."""
    return Path(run_dir) / SHARDS_DIR / f"{index}-of-{count}"


def shard_dirs(run_dir: Path) -> list[Path]:
    """The shard folders of ``run_dir`` that hold a record, in name order."""
    return sorted(p.parent for p in (Path(run_dir) / SHARDS_DIR).glob(f"*-of-*/{RUN_FILE}") if p.is_file())


def cell_files(run_dir: Path) -> list[Path]:
    """Every cell file of a run folder (finished or not: see :func:`read_cell`)."""
    return sorted((Path(run_dir) / "cells").glob("*/*.parquet"))


def copy_cells(src: Path, dst: Path) -> int:
    """Copy every cell file of ``src`` into ``dst`` (atomically, each replacing the one
    there); a file that is not a readable cell is one error naming it. Returns the count."""
    files = cell_files(src)
    for path in files:
        try:
            pq.read_metadata(path)
            data = path.read_bytes()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise PetsegError(f"cell {path} is unreadable ({type(exc).__name__}); delete it and resume that "
                              f"run to recompute it") from None
        write_bytes_atomic(Path(dst) / path.relative_to(src), data)
    return len(files)


@dataclass(frozen=True)
class Cell:
    model: str
    perturbation: str  # CLEAN for level 0
    level: int

    @property
    def is_clean(self) -> bool:
        return self.perturbation == CLEAN

    def path(self, run_dir: Path) -> Path:
        name = f"{CLEAN}.parquet" if self.is_clean else f"{self.perturbation}-L{self.level}.parquet"
        return Path(run_dir) / "cells" / self.model / name


def write_cell(run_dir: Path, cell: Cell, ids: list[str], cms: np.ndarray, value: float) -> None:
    cms = np.asarray(cms, dtype=np.int64).reshape(len(ids), N_CLASSES * N_CLASSES)
    present = np.asarray(cms).reshape(-1, N_CLASSES, N_CLASSES).sum(-1) > 0
    columns = {"image_id": pa.array(ids, pa.string())}
    columns.update({c: pa.array(cms[:, k]) for k, c in enumerate(CM_COLUMNS)})
    columns.update({c: pa.array(present[:, k]) for k, c in enumerate(PRESENT_COLUMNS)})
    meta = {"model": cell.model, "perturbation": cell.perturbation, "level": cell.level,
            "value": value, "n_images": len(ids)}
    table = pa.table(columns).replace_schema_metadata({"petseg_bench": json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(cell.path(run_dir), sink.getvalue().to_pybytes())


def read_cell(run_dir: Path, cell: Cell, expect_ids: list[str] | None = None) -> tuple[list[str], np.ndarray] | None:
    """(ids, confusion matrices [N, C, C]) of a finished cell; None if it is missing,
    truncated, unreadable, or for other images (a killed run's leftover is recomputed,
    never merged)."""
    path = cell.path(run_dir)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"petseg_bench", b"{}"))
    except Exception:  # noqa: BLE001 - any unreadable file is simply recomputed
        return None
    if meta.get("model") != cell.model or meta.get("level") != cell.level or meta.get("perturbation") != cell.perturbation:
        return None
    ids = table.column("image_id").to_pylist()
    if meta.get("n_images") != len(ids) or (expect_ids is not None and ids != list(expect_ids)):
        return None
    cms = np.stack([table.column(c).to_numpy() for c in CM_COLUMNS], axis=1).reshape(-1, N_CLASSES, N_CLASSES)
    return ids, cms


def load_run(run_dir: Path) -> pd.DataFrame:
    """Every finished cell of a run as one long table: one row per (cell, image). A cell
    file that cannot be read is an error naming it, never a silently thinner report
    (cells are written atomically, so only damage leaves one half-written)."""
    frames = []
    for path in cell_files(run_dir):
        try:
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[b"petseg_bench"])
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise PetsegError(f"cell {path} is unreadable ({type(exc).__name__}); delete it and "
                              f"`petseg-bench run ... --resume` recomputes it") from None
        df = table.to_pandas()
        df.insert(0, "model", meta["model"])
        df.insert(1, "perturbation", meta["perturbation"])
        df.insert(2, "level", meta["level"])
        df.insert(3, "value", meta["value"])
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["model", "perturbation", "level", "value", "image_id", *CM_COLUMNS, *PRESENT_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def matrices(df: pd.DataFrame) -> np.ndarray:
    """The ``[N, C, C]`` confusion matrices of a slice of :func:`load_run`'s table."""
    return df[CM_COLUMNS].to_numpy(dtype=np.int64).reshape(-1, N_CLASSES, N_CLASSES)
