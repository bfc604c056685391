"""``petseg-bench check``: a run's headline Dice figures against a baseline, as text.

The command line prints :attr:`CheckOutcome.text` and, when :attr:`CheckOutcome.error`
is set, fails with that one line. A run or baseline that cannot be read at all raises
:class:`~petseg_bench.errors.PetsegError` instead, as every other command does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..atomic import write_json_atomic
from .baseline import HEADERS, Comparison, baseline_document, compare, load_baseline, resolve_tolerance
from .summary import DEFAULT_REFERENCE, baseline_values, load_summary

#: Failures named one by one in the error line; the table shows them all.
SHOWN_FAILURES = 8


@dataclass(frozen=True)
class CheckOutcome:
    text: str  # what to print: the table and verdict, or the "baseline written" line
    error: str | None = None  # the one-line failure; None when the check passed


def check_run(run_dir: Path, baseline_path: Path, tolerance: float | None, update: bool,
              reference_model: str = DEFAULT_REFERENCE) -> CheckOutcome:
    """Compare the run in ``run_dir`` with the baseline at ``baseline_path``, or, with
    ``update``, write this run's figures there as the new baseline."""
    run_dir, baseline_path = Path(run_dir), Path(baseline_path)
    # No bootstrap: check compares the figures themselves, and the CIs would cost most of the time.
    _, summary = load_summary(run_dir, n_boot=0, reference_model=reference_model)
    current = baseline_values(summary)
    if update:
        return _write_baseline(current, baseline_path, tolerance)
    base = load_baseline(baseline_path, run_dir)
    tol = resolve_tolerance(tolerance, base)
    results = compare(current, base, tol)
    table = _table(results)
    failed = [r for r in results if r.failed]
    if failed:
        return CheckOutcome(table, _failure_line(failed, len(results), tol, current["reduction"]))
    n_better = sum(r.status == "improved" for r in results)
    verdict = (f"ok: {len(results)} figures within tolerance {tol:g} of {baseline_path}"
               + (f" ({n_better} improved)" if n_better else ""))
    return CheckOutcome(f"{table}\n{verdict}")


def _write_baseline(current: Mapping[str, Any], path: Path, tolerance: float | None) -> CheckOutcome:
    # An existing baseline's tolerance survives an update unless one is given.
    old = load_baseline(path) if path.is_file() else None
    tol = resolve_tolerance(tolerance, old)
    write_json_atomic(path, baseline_document(current, tol))
    n_values = sum(1 + len(m["perturbations"]) for m in current["models"].values())
    return CheckOutcome(f"baseline written: {path} ({len(current['models'])} models, {n_values} figures, "
                        f"tolerance {tol:g})")


def _table(results: list[Comparison]) -> str:
    from tabulate import tabulate

    return tabulate([r.row() for r in results], headers=HEADERS, disable_numparse=True,
                    colalign=("left", "left", "right", "right", "right", "left"))


def _failure_line(failed: list[Comparison], n_results: int, tol: float, reduction: str) -> str:
    shown = "; ".join(r.describe() for r in failed[:SHOWN_FAILURES])
    if len(failed) > SHOWN_FAILURES:
        shown += f"; and {len(failed) - SHOWN_FAILURES} more"
    return (f"{len(failed)} of {n_results} figures regressed past tolerance {tol:g} or are "
            f"missing ({reduction} reduction): {shown}")
