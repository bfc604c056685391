"""Test scores over training seeds: mean and spread per model, beside the per-image CI.

Reads the ``evaluate`` JSON of each (seed, model) and writes one Markdown table: one
training seed cannot say which differences between models are real, the spread over
seeds can. ``python -m petseg_bench.reporting.seeds RUN/clean --void ignore`` reads
``RUN/clean/seed<S>/<model>.<void>.json``.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from ..data.breeds import THIN, WELL
from ..errors import PetsegError
from ..labels import CLASS_NAMES

_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass(frozen=True)
class SeedScores:
    """One model's figures at one training seed (dataset reduction)."""

    seed: int
    miou: float
    iou: tuple[float, ...]
    ci95: tuple[float, float] | None
    well: float | None
    thin: float | None


def read_evaluation(path: Path, seed: int) -> SeedScores:
    try:
        data = json.loads(Path(path).read_text())
        iou = data["metrics"]["dataset"]["iou"]
        groups = (data.get("breeds") or {}).get("groups") or {}
        ci = iou.get("ci95")
        return SeedScores(seed, float(iou["mean"]), tuple(float(iou["per_class"][c]) for c in CLASS_NAMES),
                          tuple(ci) if ci and None not in ci else None,
                          (groups.get(WELL) or {}).get("miou"), (groups.get(THIN) or {}).get("miou"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PetsegError(f"{path} is not an `evaluate` result: {type(exc).__name__}: {exc}") from None


def collect(clean_dir: Path, void: str) -> dict[str, list[SeedScores]]:
    """``{model: [scores per seed]}`` from ``clean_dir/seed<S>/<model>.<void>.json``."""
    found: dict[str, list[SeedScores]] = {}
    for sub in sorted(Path(clean_dir).iterdir()) if Path(clean_dir).is_dir() else []:
        m = _SEED_DIR.match(sub.name)
        if not m or not sub.is_dir():
            continue
        for path in sorted(sub.glob(f"*.{void}.json")):
            found.setdefault(path.name[: -len(f".{void}.json")], []).append(read_evaluation(path, int(m.group(1))))
    if not found:
        raise PetsegError(f"no {clean_dir}/seed<S>/<model>.{void}.json evaluations found")
    return found


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def seed_table(scores: dict[str, list[SeedScores]]) -> str:
    rows = []
    for model, runs in scores.items():
        runs = sorted(runs, key=lambda s: s.seed)
        first = runs[0]
        well, thin = _mean([r.well for r in runs]), _mean([r.thin for r in runs])
        rows.append([
            model, ",".join(str(r.seed) for r in runs), _spread([r.miou for r in runs]),
            f"[{first.ci95[0]:.3f}, {first.ci95[1]:.3f}]" if first.ci95 else "n/a",
            " / ".join(f"{statistics.fmean(r.iou[c] for r in runs):.3f}" for c in range(len(CLASS_NAMES))),
            "n/a" if well is None else f"{well:.3f}", "n/a" if thin is None else f"{thin:.3f}",
            "n/a" if well is None or thin is None else f"{thin - well:+.3f}",
        ])
    headers = ["model", "seeds", "mIoU mean ± sd (min-max)", f"95% CI, seed {min(r.seed for v in scores.values() for r in v)}",
               "IoU " + "/".join(CLASS_NAMES) + " (mean)", "mIoU well-represented breeds", "mIoU other breeds", "gap"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clean_dir", type=Path)
    ap.add_argument("--void", default="ignore", choices=("ignore", "nearest"))
    args = ap.parse_args(argv)
    try:
        print(seed_table(collect(args.clean_dir, args.void)))
    except PetsegError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
