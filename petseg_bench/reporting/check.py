"""``petseg-bench check``: a run's headline Dice figures against a baseline, as text.

The figures (:mod:`.baseline`): per model, clean mean Dice and each perturbation's mean
Dice over its levels, seed reduction. A baseline holds each figure's mean over R runs,
their min and max, their standard deviation (ddof 1) and, usually, each image's scores.
For each figure of the baseline, with ``now`` the run's value:

- **drop** ``D = mean - now`` (positive: worse);
- **run noise** ``n = t(0.975, df) * s * sqrt(1 + 1/R)``: the half-width of the 95%
  prediction interval of one more run's figure around the mean of R runs. ``s^2`` is the
  model's run-to-run variance pooled over its F figures (mean of std^2; a per-figure std
  from three runs is too rough to gate on), ``df = F * (R - 1)``; where the mean of it
  and the variance pooled over all models' figures is larger, that mean is used (runs
  that happened to agree do not make a model look more than twice as steady as the
  others). 0 for one run;
- **spread** ``S = max(mean - min, n)``: what the baseline's runs explain;
- **allowed drop** ``A = tolerance + S``.

Each figure is judged by exactly one rule, named in the table's ``rule`` column:

- ``paired``, when the baseline has the figure's per-image scores and the run has the
  same test images: the per-image differences of the run from the baseline's mean are
  resampled over images (paired bootstrap: 2000 resamples of the images, seed 0, the same
  resamples for every figure; each resample recomputes both figures with the seed
  reduction), giving the drop's 95% interval ``[lo, hi]``. The figure is REGRESSED when
  ``D > A`` (beyond tolerance and what the baseline's runs explain) **and** ``lo >
  tolerance`` (past tolerance across the images, not the doing of a few).
- ``figure``, otherwise (the old single-run baseline format, a baseline without
  per-image scores, a figure edited or added by hand, other test images): REGRESSED when
  ``D > A``. For an old baseline (no spread) that is the old rule, ``now < baseline -
  tolerance``.

A figure of the baseline that the run lacks (an absent cell) is MISSING and fails,
naming the cell files; a cell file that is unreadable, of another model, or for other
images is an error naming it (:func:`.baseline.read_cells`), as are a run with no cell
and a baseline that is empty, malformed or has a non-numeric figure. A figure above
``mean + tolerance + max(max - mean, n)`` is shown as improved; figures only the run has
are shown as new. Both pass.

The command line prints :attr:`CheckOutcome.text` and, when :attr:`CheckOutcome.error`
is set, fails with that one line; unreadable input raises
:class:`~petseg_bench.errors.PetsegError`, as every other command does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..atomic import write_bytes_atomic
from ..metrics import SCORE_REDUCTION, divide
from .baseline import (CLEAN_FIGURE, Baseline, BaselineFigure, RunFigures, baseline_json, build_baseline,
                       figure_label, load_baseline, read_run_figures, resolve_tolerance)
from .fmt import DASH
from .summary import DEFAULT_REFERENCE

#: Failures named one by one in the error line; the table shows them all.
SHOWN_FAILURES = 8
N_BOOT = 2000
BOOT_SEED = 0
LEVEL = 0.95
#: The prediction interval of one more run's figure that a figure's allowed drop includes.
NOISE_QUANTILE = 0.975
HEADERS = ["model", "metric", "baseline mean [min, max]", "now", "delta [95% CI]", "allowed drop", "status", "rule"]


@dataclass(frozen=True)
class CheckOutcome:
    text: str  # what to print: the table and verdict, or the "baseline written" line
    error: str | None = None  # the one-line failure; None when the check passed


@dataclass(frozen=True)
class Comparison:
    model: str
    figure: str
    base: BaselineFigure | None
    now: float | None
    status: str  # ok | improved | REGRESSED | MISSING | new
    rule: str = ""  # paired | figure
    allowed: float | None = None
    drop_ci: tuple[float, float] | None = None  # 95% interval of baseline mean - now
    why: str = ""  # MISSING: the absent cells

    @property
    def metric(self) -> str:
        return figure_label(self.figure)

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.now is None else self.now - self.base.mean

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSED", "MISSING")

    def row(self) -> list[str]:
        b, d = self.base, self.delta
        base = DASH if b is None else f"{b.mean:.4f}" + (f" [{b.low:.4f}, {b.high:.4f}]" if b.own_spread else "")
        delta = DASH if d is None else _signed(d)
        if d is not None and self.drop_ci:
            delta += f" [{_signed(-self.drop_ci[1])}, {_signed(-self.drop_ci[0])}]"
        return [self.model, self.metric, base, DASH if self.now is None else f"{self.now:.4f}", delta,
                DASH if self.allowed is None else f"{self.allowed:.4f}", self.status, self.rule or DASH]

    def describe(self) -> str:
        if self.status == "MISSING":
            return f"{self.model} {self.metric} (missing from the run: {self.why})"
        text = f"{self.model} {self.metric} {self.base.mean:.4f} -> {self.now:.4f} ({_signed(self.delta)}"
        if self.drop_ci:
            text += f", 95% CI [{_signed(-self.drop_ci[1])}, {_signed(-self.drop_ci[0])}]"
        return text + f"; {self.rule} rule, allowed drop {self.allowed:.4f})"


def _signed(value: float) -> str:
    return f"{round(value, 4) + 0.0:+.4f}"  # + 0.0: no "-0.0000"


# --- the rule ---------------------------------------------------------------------------------

def bootstrap_counts(n_images: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """``[n_boot, n_images]`` multinomial image counts: each row one resample of the images."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot).astype(np.float64)


def _class_mean(per_class: np.ndarray) -> np.ndarray:
    has = ~np.isnan(per_class)
    return divide(np.where(has, per_class, 0.0).sum(-1), has.sum(-1))


def paired_drop_ci(base: np.ndarray, now: np.ndarray, counts: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of the drop (baseline figure - run figure) over
    paired resamples of the images (``counts``: :func:`bootstrap_counts`); ``base`` and
    ``now`` are ``[N, C]`` per-image per-class scores of the same images in the same order,
    NaN where a class is not in an image's ground truth. Each resample recomputes both
    figures with the seed reduction: per class the weighted mean over the images that have
    it, then the mean over classes."""
    valid = ~np.isnan(base) & ~np.isnan(now)
    n_classes = base.shape[1]
    sums = counts @ np.concatenate([np.where(valid, base, 0.0), np.where(valid, now, 0.0), valid], axis=1)
    weights = sums[:, 2 * n_classes:]
    drops = (_class_mean(divide(sums[:, :n_classes], weights))
             - _class_mean(divide(sums[:, n_classes:2 * n_classes], weights)))
    drops = drops[np.isfinite(drops)]
    if not len(drops):
        return float("nan"), float("nan")
    lo, hi = np.percentile(drops, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _pooled_variance(figures: Iterable[BaselineFigure]) -> tuple[float, int]:
    """(mean of std^2, how many) over the figures that have a spread of their own."""
    variances = [f.std ** 2 for f in figures if f.own_spread]
    return (float(np.mean(variances)) if variances else 0.0), len(variances)


def run_noise(figures: Mapping[str, BaselineFigure], n_runs: int,
              everyone: Iterable[BaselineFigure] = ()) -> float:
    """How far one more good run of a model may fall from the mean of ``n_runs``: the
    half-width of the 95% prediction interval ``t(0.975, df) * s * sqrt(1 + 1/n_runs)``.
    ``s^2`` is the model's run-to-run variance pooled over its F figures (``df = F *
    (n_runs - 1)``), raised to the mean of it and the variance pooled over ``everyone``
    (all models' figures) where that is larger: runs that happened to agree do not make a
    model look more than twice as steady as the others. 0 for one run."""
    from scipy.stats import t

    own, n_figures = _pooled_variance(figures.values())
    if not n_figures or n_runs < 2:
        return 0.0
    overall, n_all = _pooled_variance(everyone)
    variance = max(own, (own + overall) / 2) if n_all else own
    return float(t.ppf(NOISE_QUANTILE, n_figures * (n_runs - 1)) * np.sqrt(variance * (1 + 1 / n_runs)))


def judge(model: str, figure: str, base: BaselineFigure, now: float, tol: float, noise: float,
          paired: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Comparison:
    """One figure by the rule of the module docstring (``noise``: :func:`run_noise` of the
    model); ``paired``: (baseline, run) per-image scores in the same image order and the
    bootstrap counts, for the paired rule; without them, the figure rule."""
    allowed = tol + max(base.mean - base.low, noise)
    drop = base.mean - now
    ci = paired_drop_ci(*paired) if paired is not None else None
    if ci is not None and np.isfinite(ci[0]):
        regressed, rule = drop > allowed and ci[0] > tol, "paired"
    else:
        regressed, rule, ci = drop > allowed, "figure", None
    improved = now - base.mean > tol + max(base.high - base.mean, noise)
    status = "REGRESSED" if regressed else "improved" if improved else "ok"
    return Comparison(model, figure, base, now, status, rule, allowed, ci)


def _alignment(run: RunFigures, base: Baseline) -> tuple[np.ndarray | None, str]:
    """Positions in the run of the baseline's images (None where they differ), and a note."""
    if base.legacy:
        return None, "the baseline is in the old single-run format: no spread, no per-image scores"
    if base.ids is None:
        return None, "the baseline has no per-image scores"
    if len(set(base.ids)) != len(base.ids) or sorted(base.ids) != sorted(run.ids):
        shared = len(set(base.ids) & set(run.ids))
        return None, (f"the run's {len(run.ids)} test images are not the baseline's {len(base.ids)} "
                      f"({shared} shared): figures compared as wholes")
    pos = {i: k for k, i in enumerate(run.ids)}
    return np.array([pos[i] for i in base.ids]), ""


def _missing(run: RunFigures, model: str, figure: str) -> str:
    paths = run.missing.get((model, figure))
    if not paths:
        return "the figure is undefined (no image has a scored class)"
    shown = ", ".join(str(p) for p in paths[:2])
    return f"{shown} not found" + (f" (and {len(paths) - 2} more cells)" if len(paths) > 2 else "")


def compare(run: RunFigures, base: Baseline, tol: float,
            counts: np.ndarray | None = None) -> tuple[list[Comparison], str]:
    """One comparison per figure in the baseline or the run (baseline order first), and
    the note on pairing ("" when every figure with per-image scores could be paired)."""
    align, note = _alignment(run, base)
    if align is not None and counts is None:
        counts = bootstrap_counts(len(align))
    out: list[Comparison] = []
    everyone = [f for figs in base.figures.values() for f in figs.values()]
    for model in [*base.figures, *[m for m in run.figures if m not in base.figures]]:
        figs, now = base.figures.get(model, {}), run.figures.get(model, {})
        noise = run_noise(figs, base.n_runs, everyone)
        for fig in [*figs, *[f for f in now if f not in figs]]:
            b, x = figs.get(fig), now.get(fig)
            if b is None and x is None and (model, fig) in run.missing:  # a partial run fails, baseline or not
                out.append(Comparison(model, fig, None, None, "MISSING", why=_missing(run, model, fig)))
            elif b is None:
                out.append(Comparison(model, fig, None, x, "new"))
            elif x is None:
                out.append(Comparison(model, fig, b, None, "MISSING", why=_missing(run, model, fig)))
            else:
                scores = run.per_image.get(model, {}).get(fig)
                paired = None
                if align is not None and b.per_image is not None and scores is not None:
                    paired = (b.per_image, scores[align], counts)
                out.append(judge(model, fig, b, x, tol, noise, paired))
    return out, note


# --- the command ------------------------------------------------------------------------------

def check_run(run_dir: Path, baseline_path: Path, tolerance: float | None, update: bool,
              reference_model: str = DEFAULT_REFERENCE) -> CheckOutcome:
    """Compare the run in ``run_dir`` with the baseline at ``baseline_path``, or, with
    ``update``, write this run alone as the new baseline (:func:`write_baseline` takes
    several). ``reference_model`` is accepted for compatibility: no checked figure uses it."""
    run_dir, baseline_path = Path(run_dir), Path(baseline_path)
    if update:
        return write_baseline([run_dir], baseline_path, tolerance)
    base = load_baseline(baseline_path, run_dir)
    tol = resolve_tolerance(tolerance, base)
    run = read_run_figures(run_dir, base.expected(), base.levels)
    results, note = compare(run, base, tol)
    text = "\n".join([*_notes(base, tol, results, note), "", _table(results)])
    failed = [r for r in results if r.failed]
    if failed:
        return CheckOutcome(text, _failure_line(failed, len(results), tol))
    n_better = sum(r.status == "improved" for r in results)
    n_judged = sum(r.status != "new" for r in results)
    verdict = (f"ok: {n_judged} figures within the allowed drop (tolerance {tol:g} + spread) of {baseline_path}"
               + (f" ({n_better} improved)" if n_better else ""))
    return CheckOutcome(f"{text}\n{verdict}")


def write_baseline(run_dirs: Sequence[Path], path: Path, tolerance: float | None) -> CheckOutcome:
    """Build a baseline from ``run_dirs`` and write it to ``path`` atomically. Without a
    tolerance, an existing baseline's tolerance survives, else the default."""
    path = Path(path)
    tol = resolve_tolerance(tolerance, {"tolerance": _existing_tolerance(path)})
    doc = build_baseline([Path(d) for d in run_dirs], tol)
    write_bytes_atomic(path, (baseline_json(doc) + "\n").encode())
    n_figures = sum(1 + len(m["perturbations"]) for m in doc["models"].values())
    n_scored = sum((m[CLEAN_FIGURE] is not None) + len(m["perturbations"]) for m in doc["per_image"].values())
    return CheckOutcome(f"baseline written: {path} ({doc['n_runs']} run{'s' if doc['n_runs'] > 1 else ''}, "
                        f"{len(doc['models'])} models, {n_figures} figures, per-image scores of "
                        f"{len(doc['images']['ids'])} images for {n_scored} of them, tolerance {tol:g})")


def _existing_tolerance(path: Path) -> float | None:
    try:
        tol = json.loads(path.read_text()).get("tolerance")
    except (OSError, ValueError, AttributeError):
        return None
    return tol if isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0 else None


def _notes(base: Baseline, tol: float, results: list[Comparison], pairing: str) -> list[str]:
    if base.legacy:
        what = "old single-run format (no spread, no per-image scores)"
    else:
        runtimes = sorted({str(r.get("runtime")) for r in base.runs if isinstance(r, dict) and r.get("runtime")})
        what = f"{base.n_runs} run{'s' if base.n_runs > 1 else ''}" + (f" ({'; '.join(runtimes)})" if runtimes else "")
    lines = [f"baseline {base.path}: {what}, {SCORE_REDUCTION} reduction"]
    if base.n_runs == 1:
        lines.append("  one run records no spread: build the baseline from several runs (training seeds, fp32 and "
                     "bf16) so that it knows how much good runs differ")
    n_paired = sum(r.rule == "paired" for r in results)
    n_figure = sum(r.rule == "figure" for r in results)
    lines.append(f"allowed drop = tolerance {tol:g} + spread; spread = max(baseline mean - min, run noise); run noise "
                 f"= half-width of the 95% prediction interval of one more run (the model's run-to-run std pooled "
                 f"over its figures)")
    lines.append(f"rule paired ({n_paired} figures): a figure fails when the drop exceeds the allowed drop and the "
                 f"low end of its 95% interval (paired bootstrap over images, {N_BOOT} resamples, seed {BOOT_SEED}) "
                 f"exceeds the tolerance")
    reason = pairing or "no per-image scores for these figures in the baseline (edited or added by hand)"
    lines.append(f"rule figure ({n_figure} figures): a figure fails when the drop exceeds the allowed drop"
                 + (f"; used because {reason}" if n_figure else ""))
    return lines


def _table(results: list[Comparison]) -> str:
    from tabulate import tabulate

    return tabulate([r.row() for r in results], headers=HEADERS, disable_numparse=True,
                    colalign=("left", "left", "right", "right", "right", "right", "left", "left"))


def _failure_line(failed: list[Comparison], n_results: int, tol: float) -> str:
    shown = "; ".join(r.describe() for r in failed[:SHOWN_FAILURES])
    if len(failed) > SHOWN_FAILURES:
        shown += f"; and {len(failed) - SHOWN_FAILURES} more"
    return (f"{len(failed)} of {n_results} figures regressed past tolerance {tol:g} + spread or are "
            f"missing ({SCORE_REDUCTION} reduction): {shown}")
