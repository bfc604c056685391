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
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import write_bytes_atomic, write_json_atomic
from .errors import PetsegError, one_line
from .families import model_dirname, model_from_dirname
from .labels import CLASS_NAMES, N_CLASSES
from .run_record import ModelInfo, RunRecord, RuntimeFacts  # noqa: F401 - the record's types live here too

RUN_FILE = "run.json"
SHARDS_DIR = "shards"
CLEAN = "clean"
CM_COLUMNS = [f"cm_{t}_{p}" for t in range(N_CLASSES) for p in range(N_CLASSES)]
PRESENT_COLUMNS = [f"has_{c}" for c in CLASS_NAMES]
_CELL_NAME = re.compile(r"^(?P<pert>.+)-L(?P<level>\d+)$")


def read_run(run_dir: Path) -> RunRecord:
    """The run record of ``run_dir``, checked against the schema (:meth:`RunRecord.from_json`);
    one clear line naming the file and its first problem when it is missing or malformed."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        if shard_dirs(run_dir):
            raise PetsegError(f"no {RUN_FILE} in {run_dir}, only shard records: merge them with "
                              f"`petseg-bench report {run_dir}`")
        raise PetsegError(f"no {RUN_FILE} in {run_dir}: not a sweep run folder (make one with `petseg-bench run`)")
    return read_record_file(path)


def read_record_file(path: Path) -> RunRecord:
    """The run record in the file ``path`` (a run's or a shard's run.json), checked."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PetsegError(f"{path} is unreadable: {one_line(exc)}") from None
    return RunRecord.from_json(data, path)


def check_path_text(path: str | Path | None, option: str) -> None:
    """One line for a path with a control character (a newline, a tab...): such a
    folder is made by accident, and no report or log line could name it."""
    if path is None:
        return
    bad = [c for c in str(path) if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise PetsegError(f"{option} {str(path)!r} holds a control character ({bad[0]!r}): choose a path of "
                          f"printable characters")


def write_run(run_dir: Path, record: RunRecord) -> None:
    """Write ``record`` as ``run_dir``'s run.json (the only writer of run.json: its keys
    in the record's order, :meth:`RunRecord.to_json`)."""
    if not isinstance(record, RunRecord):
        raise TypeError(f"write_run takes a RunRecord, not {type(record).__name__}")
    write_json_atomic(Path(run_dir) / RUN_FILE, record.to_json())


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
        return Path(run_dir) / "cells" / model_dirname(self.model) / name  # onnx:m/u.onnx -> onnx+m%2Fu.onnx


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


def cell_of_path(path: Path) -> Cell:
    """The cell a file's folder and name say it is; one line for a name that is no cell's."""
    path = Path(path)
    if path.stem == CLEAN:
        return Cell(model_from_dirname(path.parent.name), CLEAN, 0)
    match = _CELL_NAME.match(path.stem)
    if not match or int(match["level"]) == 0:
        raise PetsegError(f"{path} is not a cell file name (clean.parquet or <perturbation>-L<level>.parquet)")
    return Cell(model_from_dirname(path.parent.name), match["pert"], int(match["level"]))


@dataclass
class CellData:
    """A finished cell's rows, checked: the image ids, the ``[N, C, C]`` confusion
    matrices, the level's parameter value and the table as stored."""

    ids: list[str]
    cms: np.ndarray
    value: float | int  # as the metadata holds it (the level values of a plugin may be ints)
    table: pa.Table


def inspect_cell(path: Path, cell: Cell, expect_ids: list[str] | None = None) -> tuple[CellData | None, str]:
    """(the cell's data, "") when the file at ``path`` is a whole cell ``cell`` (of the
    images ``expect_ids``, in that order, where given), else (None, why not: words that
    follow the file's name)."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        return None, f"is unreadable ({type(exc).__name__}: {one_line(exc, 120)})"
    try:
        meta = json.loads((table.schema.metadata or {}).get(b"petseg_bench", b"{}"))
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not meta:
        return None, "has no petseg_bench metadata: not a cell written by the sweep"
    for key, ok in (("model", isinstance(meta.get("model"), str)), ("perturbation", isinstance(meta.get("perturbation"), str)),
                    ("level", _whole(meta.get("level"))), ("n_images", _whole(meta.get("n_images"))),
                    ("value", _finite(meta.get("value")))):
        if not ok:
            return None, f"has metadata without a valid {key} ({meta.get(key)!r})"
    if meta["model"] != cell.model:
        return None, f"holds a cell of model {meta['model']!r}, not of {cell.model!r} (its folder)"
    if meta["perturbation"] != cell.perturbation or meta["level"] != cell.level:
        return None, f"holds {meta['perturbation']} level {meta['level']}, not what its name says"
    absent = [c for c in ("image_id", *CM_COLUMNS, *PRESENT_COLUMNS) if c not in table.column_names]
    if absent:
        return None, f"lacks the column {absent[0]}"
    if meta["n_images"] != table.num_rows:
        return None, f"is truncated ({table.num_rows} rows, its metadata says {meta['n_images']})"
    ids = table.column("image_id").to_pylist()
    if not all(isinstance(i, str) for i in ids):
        return None, "has an image id that is not a string"
    if len(set(ids)) != len(ids):
        return None, f"lists image {next(i for i in ids if ids.count(i) > 1)!r} twice"
    if expect_ids is not None and ids != list(expect_ids):
        if len(ids) != len(expect_ids):
            return None, f"has {len(ids)} rows, the run has {len(expect_ids)} images (run.json image_ids)"
        return None, "holds other images than the run's (run.json image_ids, or the run's other cells)"
    for c in (*CM_COLUMNS, *PRESENT_COLUMNS):
        col = table.column(c)
        kind = pa.types.is_integer if c in CM_COLUMNS else pa.types.is_boolean
        if not kind(col.type) or col.null_count:
            return None, f"has a column {c} of {col.type}{' with empty values' if col.null_count else ''}"
    cms = np.stack([table.column(c).to_numpy() for c in CM_COLUMNS], axis=1).astype(np.int64)
    if (cms < 0).any():
        n, k = np.argwhere(cms < 0)[0]
        return None, f"has a negative count in {CM_COLUMNS[k]} (image {ids[n]!r})"
    cms = cms.reshape(-1, N_CLASSES, N_CLASSES)
    present = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in PRESENT_COLUMNS], axis=1)
    wrong = np.argwhere(present != (cms.sum(-1) > 0))
    if len(wrong):
        n, k = wrong[0]
        return None, f"says in {PRESENT_COLUMNS[k]} the opposite of its counts (image {ids[n]!r})"
    return CellData(ids, cms, meta["value"], table), ""


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def read_cell(run_dir: Path, cell: Cell, expect_ids: list[str] | None = None) -> tuple[list[str], np.ndarray] | None:
    """(ids, confusion matrices [N, C, C]) of a finished cell; None if it is missing,
    truncated, unreadable, damaged or for other images (a killed run's leftover, or a
    damaged file, is recomputed, never merged)."""
    path = cell.path(run_dir)
    if not path.is_file():
        return None
    data, _ = inspect_cell(path, cell, expect_ids)
    return None if data is None else (data.ids, data.cms)


def scored_pixels(cms: np.ndarray) -> np.ndarray:
    """Each image's scored pixels ``[N]`` (the sum of its confusion counts): the same in
    every cell of a run, since perturbations change the images, never the masks."""
    return np.asarray(cms).sum((-2, -1))


def odd_truth(cells: dict, ids: list[str]) -> tuple[object, str] | None:
    """The first of ``cells`` (key -> ``[N, C, C]`` over ``ids``) whose per-image scored
    pixel counts disagree with most cells' (a count was changed), and the first such
    image; None when all agree. run.json does not store the counts: the cells vouch for
    each other."""
    if len(cells) < 2:
        return None
    sums = {k: scored_pixels(cms) for k, cms in cells.items()}
    votes: dict[bytes, int] = {}
    for t in sums.values():
        votes[t.tobytes()] = votes.get(t.tobytes(), 0) + 1
    common = max(votes, key=votes.get)
    ref = next(t for t in sums.values() if t.tobytes() == common)
    for k, t in sums.items():
        if t.tobytes() != common:
            return k, ids[int(np.argwhere(t != ref)[0][0])]
    return None


def expected_cells(record: RunRecord, inputs=None) -> list[Cell]:
    """Every cell a run record asks for: per model its clean cell and each perturbation at
    each requested level it has; a click perturbation only for models that take a click
    (``model_info``'s ``eval_click_rule``, else ``inputs(model)``'s "point"; unknown: not
    expected). A shard's record asks only for its own groups' cells."""
    clicks = set(record.click_perturbations)
    out = []
    for m in record.models:
        takes_click = record.takes_click(m)
        if takes_click is None:
            takes_click = inputs is not None and "point" in (inputs(m) or ())
        out.append(Cell(m, CLEAN, 0))
        for p in record.perturbations:
            if p in clicks and not takes_click:
                continue
            values = record.level_values(p)
            n = len(values) if values is not None else None
            out += [Cell(m, p, lv) for lv in record.levels if n is None or lv < n]
    shard = record.shard
    if isinstance(shard, dict):
        perts = {p: sorted({c.level for c in out if c.perturbation == p}) for p in record.perturbations}
        owned = owned_groups(all_groups(record.perturbations, perts), shard["index"], shard["count"])
        out = [c for c in out if (c.perturbation, c.level) in owned]
    return out


def all_groups(perturbations, levels: dict[str, list[int]]) -> list[tuple[str, int]]:
    """Every (perturbation, level) group of a sweep in the shards' fixed order (see
    :mod:`petseg_bench.engine.shard`): clean first, then perturbations by name, levels ascending."""
    return [(CLEAN, 0)] + [(p, lv) for p in sorted(perturbations) for lv in sorted(levels.get(p, []))]


def owned_groups(groups, index: int, count: int) -> set[tuple[str, int]]:
    """Shard ``index`` of ``count``'s groups among ``groups`` (:func:`all_groups`): dealt round-robin."""
    return {g for k, g in enumerate(groups) if k % count == index}


@dataclass
class RunFolder:
    """A run folder read whole and checked (:func:`read_run_folder`)."""

    run_dir: Path
    record: RunRecord
    cells: dict[Cell, CellData]  # in file order
    missing: list[Cell]  # cells the record asks for that are not there

    def missing_paths(self) -> list[Path]:
        return [c.path(self.run_dir) for c in self.missing]


def read_run_folder(run_dir: Path, record: RunRecord | None = None, inputs=None) -> RunFolder:
    """Every cell of ``run_dir`` checked against its run record (:func:`read_run` unless
    given): each is a whole cell of a model, perturbation and level the run has, for the
    run's images, with the same ground truth per image as the run's other cells.
    Anything else is one line naming the file and its first problem. Cells the record
    asks for that are absent are listed in ``missing`` (see :func:`expected_cells`)."""
    run_dir = Path(run_dir)
    record = read_run(run_dir) if record is None else record
    ids = list(record.image_ids)
    models, perts = set(record.models), set(record.perturbations)
    cells: dict[Cell, CellData] = {}
    for path in cell_files(run_dir):
        cell = cell_of_path(path)
        if cell.model not in models:
            raise PetsegError(f"{path} is a cell of model {cell.model!r}, which the run never had "
                              f"({RUN_FILE} models: {', '.join(record.models)}); remove it or restore {RUN_FILE}")
        if not cell.is_clean and cell.perturbation not in perts:
            raise PetsegError(f"{path} is a cell of perturbation {cell.perturbation!r}, which the run never had "
                              f"({RUN_FILE} perturbations); remove it or restore {RUN_FILE}")
        if not cell.is_clean and cell.level not in record.levels:
            raise PetsegError(f"{path} is a cell of level {cell.level}, which the run never had ({RUN_FILE} levels "
                              f"{record.levels}); remove it or restore {RUN_FILE}")
        data, why = inspect_cell(path, cell, ids)
        if data is None:
            raise PetsegError(f"{path} {why}; delete it and `petseg-bench run ... --resume` recomputes it")
        values = record.level_values(cell.perturbation) if not cell.is_clean else [0.0]
        if values is not None and cell.level < len(values) and float(values[cell.level]) != float(data.value):
            raise PetsegError(f"{path} has level value {data.value:g}, the run's {cell.perturbation} level "
                              f"{cell.level} is {float(values[cell.level]):g}; delete it and resume the run")
        cells[cell] = data
    odd = odd_truth({c: d.cms for c, d in cells.items()}, ids)
    if odd is not None:
        raise PetsegError(f"{odd[0].path(run_dir)} counts another number of scored pixels for image {odd[1]!r} "
                          f"than the run's other cells (the masks never change); delete it and resume the run")
    missing = [c for c in expected_cells(record, inputs) if c not in cells]
    return RunFolder(run_dir, record, cells, missing)


def frame_of(cells: dict[Cell, CellData]) -> pd.DataFrame:
    """Cells as one long table: one row per (cell, image), in the given order."""
    frames = []
    for cell, data in cells.items():
        df = data.table.to_pandas()
        df.insert(0, "model", cell.model)
        df.insert(1, "perturbation", cell.perturbation)
        df.insert(2, "level", cell.level)
        df.insert(3, "value", data.value)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["model", "perturbation", "level", "value", "image_id", *CM_COLUMNS, *PRESENT_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def load_run(run_dir: Path) -> pd.DataFrame:
    """Every cell of a run folder as one long table: one row per (cell, image). Each cell
    file must be a whole cell (:func:`inspect_cell`): anything else is an error naming
    it, never a silently thinner report. See :func:`read_run_folder` for the check
    against the run record as well."""
    cells = {}
    for path in cell_files(run_dir):
        cell = cell_of_path(path)
        data, why = inspect_cell(path, cell)
        if data is None:
            raise PetsegError(f"cell {path} {why}; delete it and `petseg-bench run ... --resume` recomputes it")
        cells[cell] = data
    return frame_of(cells)


def matrices(df: pd.DataFrame) -> np.ndarray:
    """The ``[N, C, C]`` confusion matrices of a slice of :func:`load_run`'s table."""
    return df[CM_COLUMNS].to_numpy(dtype=np.int64).reshape(-1, N_CLASSES, N_CLASSES)
