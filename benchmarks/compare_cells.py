"""Whether two sweeps of the same checkpoints gave the same cells, bit for bit.

For a change to how the engine computes (not what), sweep the same checkpoints, data,
perturbations and runtime before and after it, then compare: every cell file of either
run folder must exist in both, with the same image ids, metadata and per-image
confusion counts. Prints the count of cells and image rows compared and every
difference; exits 1 on any.

    petseg-bench run --models unet,... --checkpoints CKPTS --out /tmp/before --limit 30 --no-report
    (change the code)
    petseg-bench run ... --out /tmp/after ...
    python benchmarks/compare_cells.py /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

from petseg_bench.results import cell_files


def compare(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(cells compared, image rows compared, differences)."""
    names = {p.relative_to(a) for p in cell_files(a)} | {p.relative_to(b) for p in cell_files(b)}
    diffs, rows = [], 0
    for name in sorted(names):
        if not (a / name).is_file() or not (b / name).is_file():
            diffs.append(f"{name}: only in {b if not (a / name).is_file() else a}")
            continue
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        meta_a, meta_b = (json.loads(t.schema.metadata[b"petseg_bench"]) for t in (ta, tb))
        if meta_a != meta_b:
            diffs.append(f"{name}: metadata {meta_a} != {meta_b}")
        elif not ta.equals(tb):
            da, db = ta.to_pandas(), tb.to_pandas()
            n = (da != db).any(axis=1).sum() if da.shape == db.shape else "all"
            diffs.append(f"{name}: {n} of {len(da)} image rows differ")
        rows += ta.num_rows
    return len(names), rows, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    runs = [json.loads((d / "run.json").read_text()) for d in (args.before, args.after)]
    for key in ("models", "perturbations", "levels", "seed", "image_ids", "checkpoints", "precision", "device"):
        if runs[0].get(key) != runs[1].get(key):
            print(f"note: run.json differs in {key}")
    cells, rows, diffs = compare(args.before, args.after)
    for line in diffs:
        print(line)
    print(f"{cells} cells, {rows} image rows compared: {'all equal' if not diffs else f'{len(diffs)} differ'}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
