"""The baseline ``petseg-bench check`` compares a run with, and the strict reading of a run.

A *figure* is one model's clean mean Dice (``clean_mdice``) or one perturbation's mean
Dice over its perturbed levels, both on the ``seed`` reduction (the numbers of
:func:`.summary.baseline_values`, computed with the same summary functions).

A baseline is built from one or more runs of the same sweep (other training seeds, fp32
and bf16, other CPUs: :func:`build_baseline`) and written as JSON (format 2)::

    {"format": 2, "reduction": "seed", "tolerance": 0.02, "n_runs": 3,
     "runs": [{"run_dir": "runs/s0", "seed": 0, "runtime": "cpu (...), bf16", "hardware": "...", ...}, ...],
     "levels": {"gaussian_noise": [1, 2, ..., 9], ...},
     "models": {"my_model": {"clean_mdice": 0.486, "perturbations": {"gaussian_noise": 0.481, ...}}},
     "spread": {"my_model": {"clean_mdice": {"runs": [0.49, 0.48, 0.488], "min": 0.48, "max": 0.49, "std": 0.0053},
                             "perturbations": {"gaussian_noise": {...}, ...}}},
     "images": {"ids": ["Abyssinian_219", ...], "classes": ["background", "cat", "dog"]},
     "per_image": {"my_model": {"clean_mdice": [[0.91, 0.78, null], ...],
                                "perturbations": {"gaussian_noise": [[...], ...]}}}}

``models`` holds each figure's mean over the runs (the shape of the old single-run
baseline, so old tools and hand edits keep working); ``spread`` each figure's value in
every run, their min, max and standard deviation (ddof 1; 0 for one run); ``per_image``,
per figure, each image's per-class Dice (``images.classes`` order; null where the class is
not in the image's ground truth) averaged over the runs, in ``images.ids`` order. A
perturbation's per-image score is the mean over its levels; since perturbations never
change the masks, the seed reduction of these scores is exactly the figure.

A figure's spread and per-image scores are used only where they reproduce the figure in
``models`` (to 1e-5); a figure edited or added by hand is compared on its own, with no
spread of its own. The old single-run format (no ``format`` key: ``models`` only) still
loads: zero spread, no per-image scores.

Reading a run for a baseline or a check is strict: every cell file of the run must be
readable, be the cell its name and folder say (model, perturbation, level) and hold the
run's images; otherwise the error names the file. See :mod:`.check` for the rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import PetsegError, one_line
from ..labels import CLASS_NAMES
from ..metrics import dice, divide, json_float
from ..results import CLEAN, Cell, RunRecord, cell_files, read_run, read_run_folder
from .summary import SCORE_REDUCTION, _model_inputs, curve_scores, mean_dice

FORMAT = 2
DEFAULT_TOLERANCE = 0.02
#: The figure key of clean mean Dice; every other figure is keyed by its perturbation.
CLEAN_FIGURE = "clean_mdice"
#: How closely a baseline's runs and per-image scores must reproduce its figure to be used.
REPRODUCE_EPS = 1e-5


def figure_label(figure: str) -> str:
    return "clean mDice" if figure == CLEAN_FIGURE else f"{figure} mean Dice"


# --- a run, read strictly ---------------------------------------------------------------------

@dataclass
class RunFigures:
    """A run's figures, per-image scores and the cells it lacks."""

    run_dir: Path
    record: RunRecord
    ids: list[str]
    levels: dict[str, list[int]]  # perturbation -> the levels its figures average
    figures: dict[str, dict[str, float | None]] = field(default_factory=dict)  # model -> figure -> value
    per_image: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # model -> figure -> [N, C]
    missing: dict[tuple[str, str], list[Path]] = field(default_factory=dict)  # (model, figure) -> absent cells


def read_cells(run_dir: Path, record: RunRecord) -> tuple[list[str], dict[Cell, np.ndarray], list[Cell]]:
    """(image ids, cell -> confusion matrices ``[N, C, C]``, the cells the record asks
    for that are absent) of a run, every cell file checked against the record
    (:func:`petseg_bench.results.read_run_folder`): anything off is an error naming the
    file, and so is a run with no cell at all."""
    run_dir = Path(run_dir)
    if not cell_files(run_dir):
        raise PetsegError(f"{run_dir / 'cells'} holds no finished cell: nothing to check (run or resume the sweep first)")
    folder = read_run_folder(run_dir, record, inputs=_model_inputs)
    return list(record.image_ids), {c: d.cms for c, d in folder.cells.items()}, folder.missing


def recorded_levels(record: RunRecord, perturbation: str) -> list[int] | None:
    """The perturbed levels the run record asked of ``perturbation`` (None if it does not say)."""
    if not record.has("levels"):
        return None
    values = record.level_values(perturbation)
    return sorted(int(lv) for lv in record.levels if values is None or int(lv) < len(values))


def _levels_wanted(record: RunRecord, cells: Iterable[Cell], perturbations: Iterable[str],
                   given: Mapping[str, list[int]] | None) -> dict[str, list[int]]:
    """Per perturbation, the levels its figure averages: the baseline's where it has them,
    else the run record's, else the levels on disk."""
    on_disk: dict[str, set[int]] = {}
    for cell in cells:
        if not cell.is_clean:
            on_disk.setdefault(cell.perturbation, set()).add(cell.level)
    out = {}
    for p in perturbations:
        levels = (given or {}).get(p) or recorded_levels(record, p) or sorted(on_disk.get(p, ()))
        out[p] = list(levels)
    return out


def per_image_dice(cms: np.ndarray) -> np.ndarray:
    """Each image's per-class Dice ``[N, C]``; NaN where the class is not in its ground truth."""
    return np.asarray(dice(cms), dtype=np.float64)


def figure_of_scores(scores: np.ndarray) -> float:
    """The seed reduction of per-image per-class scores ``[N, C]``: per class the mean over
    the images whose ground truth has it, then the mean over classes."""
    valid = ~np.isnan(scores)
    per_class = divide(np.where(valid, scores, 0.0).sum(0), valid.sum(0))
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


def _figure(cells: Mapping[Cell, np.ndarray], model: str, figure: str, levels: Sequence[int],
            clean: float | None) -> tuple[float | None, np.ndarray | None, list[Cell]]:
    """(value, per-image scores, absent cells) of one figure, with the summary's functions."""
    wanted = [Cell(model, CLEAN, 0)] if figure == CLEAN_FIGURE else [Cell(model, figure, lv) for lv in levels]
    absent = [c for c in wanted if c not in cells]
    if absent or not wanted:
        return None, None, absent or wanted
    if figure == CLEAN_FIGURE:
        cms = cells[wanted[0]]
        return json_float(mean_dice(cms, SCORE_REDUCTION)), per_image_dice(cms), []
    curve = {c.level: json_float(mean_dice(cells[c], SCORE_REDUCTION)) for c in wanted}
    value = curve_scores(clean, {lv: v for lv, v in curve.items() if v is not None})["mean_dice"]
    scores = np.mean([per_image_dice(cells[c]) for c in wanted], axis=0)
    # Perturbations leave the masks alone, so the level mean of each image's scores gives the
    # figure; where it does not (a class present at some levels only), no per-image scores.
    reproduced = value is not None and abs(figure_of_scores(scores) - value) <= REPRODUCE_EPS
    return value, scores if reproduced else None, []


def read_run_figures(run_dir: Path, expected: Mapping[str, Iterable[str]] | None = None,
                     levels: Mapping[str, list[int]] | None = None) -> RunFigures:
    """Every figure of the run in ``run_dir`` and of ``expected`` (model -> figures, e.g. a
    baseline's), perturbations over ``levels`` where given; figures whose cells are absent
    are None and their cells listed in ``missing``."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    ids, cells, absent = read_cells(run_dir, record)
    wanted: dict[str, list[str]] = {}
    for cell in [*cells, *absent]:  # the record's cells too: a partial run lacks figures
        figs = wanted.setdefault(cell.model, [CLEAN_FIGURE])
        if not cell.is_clean and cell.perturbation not in figs:
            figs.append(cell.perturbation)
    for model, figs in (expected or {}).items():
        have = wanted.setdefault(model, [])
        have.extend(f for f in figs if f not in have)
    perts = {f for figs in wanted.values() for f in figs if f != CLEAN_FIGURE}
    out = RunFigures(run_dir, record, ids, _levels_wanted(record, cells, sorted(perts), levels))
    for model, figs in wanted.items():
        out.figures[model], out.per_image[model] = {}, {}
        clean = None
        for fig in sorted(figs, key=lambda f: f != CLEAN_FIGURE):
            value, scores, absent = _figure(cells, model, fig, out.levels.get(fig, []), clean)
            clean = value if fig == CLEAN_FIGURE else clean
            out.figures[model][fig] = value
            if scores is not None:
                out.per_image[model][fig] = scores
            if absent:
                out.missing[(model, fig)] = [c.path(run_dir) for c in absent]
            elif value is None and fig != CLEAN_FIGURE and not out.levels.get(fig):
                out.missing[(model, fig)] = [run_dir / "cells" / model / f"{fig}-L*.parquet"]
    return out


# --- building a baseline from runs ------------------------------------------------------------

def _run_summary(run: RunFigures) -> dict:
    rec = run.record
    weights = {m: info.sha256 if info is not None else None for m, info in rec.model_info.items()}
    return {"run_dir": str(run.run_dir), "seed": rec.seed, "runtime": rec.runtime,
            "hardware": rec.hardware, "hardware_info": rec.hardware_info,
            "code_version": rec.code_version, "data_fingerprint": rec.data_fingerprint,
            "started": rec.started, "weights_sha256": weights}


def _same_sweep(runs: Sequence[RunFigures]) -> None:
    """The runs must hold the same figures, levels and images, all finished."""
    first = runs[0]
    for run in runs:
        if run.missing:
            (model, fig), paths = next(iter(run.missing.items()))
            raise PetsegError(f"cannot build a baseline from {run.run_dir}: {model} {figure_label(fig)} lacks "
                              f"{paths[0]}" + (f" and {len(paths) - 1} more cells" if len(paths) > 1 else ""))
        undefined = [(m, f) for m, figs in run.figures.items() for f, v in figs.items() if v is None]
        if undefined:
            raise PetsegError(f"cannot build a baseline from {run.run_dir}: {undefined[0][0]} "
                              f"{figure_label(undefined[0][1])} is undefined (no image has a scored class)")
        theirs = {m: sorted(f) for m, f in run.figures.items()}
        ours = {m: sorted(f) for m, f in first.figures.items()}
        for what, a, b in (("models and perturbations", ours, theirs), ("levels", first.levels, run.levels),
                           ("test images", sorted(first.ids), sorted(run.ids))):
            if a != b:
                raise PetsegError(f"cannot build one baseline from {first.run_dir} and {run.run_dir}: their "
                                  f"{what} differ (sweep them with the same options)")


def _spread(values: Sequence[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"runs": [json_float(v) for v in arr], "min": json_float(arr.min()), "max": json_float(arr.max()),
            "std": json_float(std)}


def _scores_json(scores: np.ndarray) -> list:
    return [[json_float(v) for v in row] for row in scores]


def _nested(model_figs: Mapping[str, Any]) -> dict:
    """``{figure: x}`` in the baseline's shape: ``{"clean_mdice": x, "perturbations": {p: x}}``."""
    return {CLEAN_FIGURE: model_figs.get(CLEAN_FIGURE),
            "perturbations": {f: v for f, v in model_figs.items() if f != CLEAN_FIGURE}}


def build_baseline(run_dirs: Sequence[Path], tolerance: float) -> dict:
    """The baseline document (format 2, see the module docstring) of one or more finished
    runs of the same sweep, read strictly through :mod:`petseg_bench.results`."""
    if not run_dirs:
        raise PetsegError("a baseline needs at least one run folder")
    runs = [read_run_figures(Path(d)) for d in run_dirs]
    _same_sweep(runs)
    ids = runs[0].ids
    order = [np.array([pos[i] for i in ids]) for pos in ({i: k for k, i in enumerate(run.ids)} for run in runs)]
    models, spread, per_image = {}, {}, {}
    for model, figs in runs[0].figures.items():
        means, spreads, scores = {}, {}, {}
        for fig in figs:
            values = [run.figures[model][fig] for run in runs]
            means[fig] = json_float(np.mean(values))
            spreads[fig] = _spread(values)
            if all(fig in run.per_image[model] for run in runs):
                avg = np.mean([run.per_image[model][fig][idx] for run, idx in zip(runs, order)], axis=0)
                if abs(figure_of_scores(avg) - means[fig]) <= REPRODUCE_EPS:
                    scores[fig] = _scores_json(avg)
        models[model], spread[model], per_image[model] = _nested(means), _nested(spreads), _nested(scores)
    return {"format": FORMAT, "reduction": SCORE_REDUCTION, "tolerance": float(tolerance), "n_runs": len(runs),
            "runs": [_run_summary(r) for r in runs], "levels": runs[0].levels, "models": models, "spread": spread,
            "images": {"ids": list(ids), "classes": list(CLASS_NAMES)}, "per_image": per_image}


def baseline_json(doc: Any, depth: int = 0) -> str:
    """JSON text of a baseline: indented, with every list of plain values (each image's
    scores, a figure's runs, the image ids) on one line."""
    pad = "  " * (depth + 1)
    if isinstance(doc, dict) and doc:
        items = [f"{pad}{json.dumps(str(k))}: {baseline_json(v, depth + 1)}" for k, v in doc.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(doc, list) and any(isinstance(v, (dict, list)) for v in doc):
        return "[\n" + ",\n".join(pad + baseline_json(v, depth + 1) for v in doc) + "\n" + "  " * depth + "]"
    return json.dumps(doc, allow_nan=False)


# --- loading a baseline -----------------------------------------------------------------------

@dataclass(frozen=True)
class BaselineFigure:
    mean: float
    low: float  # the lowest run (the mean where there is no spread)
    high: float
    std: float
    per_image: np.ndarray | None  # [N, C] mean over runs, or None
    own_spread: bool  # False: figure edited or added by hand, or one run only, or the old format


@dataclass(frozen=True)
class Baseline:
    path: Path
    tolerance: float | None
    n_runs: int
    legacy: bool  # the old single-run format
    ids: list[str] | None
    levels: dict[str, list[int]] | None
    figures: dict[str, dict[str, BaselineFigure]]  # model -> figure -> ...
    runs: list[dict]

    def expected(self) -> dict[str, list[str]]:
        return {m: list(figs) for m, figs in self.figures.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _flat(block: Any, where: str, path: Path) -> dict[str, Any]:
    """``{"clean_mdice": x, "perturbations": {p: y}}`` -> ``{"clean_mdice": x, p: y}``."""
    if not isinstance(block, dict) or not isinstance(block.get("perturbations", {}), dict):
        raise PetsegError(f"baseline {path}: {where} is not {{\"clean_mdice\": ..., \"perturbations\": {{...}}}}")
    out = {CLEAN_FIGURE: block[CLEAN_FIGURE]} if CLEAN_FIGURE in block else {}
    out.update(block.get("perturbations", {}))
    return out


def _read_json(path: Path, run_dir: Path | None) -> dict:
    if not path.is_file():
        hint = f"petseg-bench check {run_dir} --baseline {path} --update-baseline" if run_dir else "--update-baseline"
        raise PetsegError(f"baseline {path} not found; write one from a good run with `{hint}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PetsegError(f"baseline {path} is not readable JSON: {one_line(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PetsegError(f"baseline {path} has no \"models\" object; expected {{\"reduction\": \"seed\", "
                          f"\"models\": {{model: {{\"clean_mdice\": x, \"perturbations\": {{...}}}}}}}}")
    if not data["models"]:
        raise PetsegError(f"baseline {path} has no models: it would pass any run")
    reduction = data.get("reduction", SCORE_REDUCTION)
    if reduction != SCORE_REDUCTION:
        raise PetsegError(f"baseline {path} uses the {reduction!r} reduction; check compares {SCORE_REDUCTION!r}")
    if data.get("format", 1) not in (1, FORMAT):
        raise PetsegError(f"baseline {path} has format {data.get('format')!r}; this petseg-bench reads 1 and {FORMAT}")
    tol = data.get("tolerance")
    if tol is not None and not (_number(tol) and tol >= 0):
        raise PetsegError(f"baseline {path}: tolerance {tol!r} is not a number >= 0")
    return data


def _means(data: Mapping[str, Any], path: Path) -> dict[str, dict[str, float]]:
    out = {}
    for model, block in data["models"].items():
        figs = _flat(block, f"model {model!r}", path)
        if not figs:
            raise PetsegError(f"baseline {path}: model {model!r} has no figures: it would pass any run")
        for fig, value in figs.items():
            if not _number(value):
                raise PetsegError(f"baseline {path}: {model} {figure_label(fig)} is {value!r}, not a number")
        out[model] = {f: float(v) for f, v in figs.items()}
    return out


def _spread_of(entry: Any, mean: float, n_runs: int, where: str, path: Path) -> tuple[float, float, float] | None:
    """(min, max, std) of a figure's spread entry; None when it does not reproduce ``mean``."""
    if entry is None:
        return None
    ok = (isinstance(entry, dict) and isinstance(entry.get("runs"), list) and len(entry["runs"]) == n_runs
          and all(_number(v) for v in entry["runs"]) and all(_number(entry.get(k)) for k in ("min", "max", "std")))
    if not ok:
        raise PetsegError(f"baseline {path}: the spread of {where} is not {{\"runs\": [{n_runs} numbers], "
                          f"\"min\", \"max\", \"std\"}}")
    if abs(float(np.mean(entry["runs"])) - mean) > REPRODUCE_EPS:
        return None
    return float(entry["min"]), float(entry["max"]), float(entry["std"])


def _scores_of(entry: Any, mean: float, n_images: int, where: str, path: Path) -> np.ndarray | None:
    if entry is None:
        return None
    try:
        scores = np.array(entry, dtype=np.float64)
    except (TypeError, ValueError):
        scores = None
    if scores is None or scores.shape != (n_images, len(CLASS_NAMES)):
        raise PetsegError(f"baseline {path}: per_image of {where} is not {n_images} lists of "
                          f"{len(CLASS_NAMES)} per-class scores (null where a class is absent)")
    return scores if abs(figure_of_scores(scores) - mean) <= REPRODUCE_EPS else None


def _v2_parts(data: Mapping[str, Any], path: Path) -> tuple[int, list[str] | None, dict | None, list[dict]]:
    n_runs = data.get("n_runs")
    if not (isinstance(n_runs, int) and n_runs >= 1) or not isinstance(data.get("spread"), dict):
        raise PetsegError(f"baseline {path}: format {FORMAT} needs \"n_runs\" (>= 1) and a \"spread\" object")
    ids = (data.get("images") or {}).get("ids") if isinstance(data.get("images"), dict) else None
    if data.get("per_image") is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise PetsegError(f"baseline {path}: per_image scores need \"images\": {{\"ids\": [image ids]}}")
    levels = data.get("levels")
    if levels is not None and not (isinstance(levels, dict) and all(
            isinstance(v, list) and all(isinstance(lv, int) and lv > 0 for lv in v) for v in levels.values())):
        raise PetsegError(f"baseline {path}: \"levels\" is not {{perturbation: [levels >= 1]}}")
    runs = data.get("runs") if isinstance(data.get("runs"), list) else []
    return n_runs, ids, levels, runs


def load_baseline(path: Path, run_dir: Path | None = None) -> Baseline:
    """A baseline file, validated: missing, malformed, empty or non-numeric baselines are
    errors naming the file (a check against them would pass vacuously)."""
    path = Path(path)
    data = _read_json(path, run_dir)
    means = _means(data, path)
    tol = data.get("tolerance")
    if data.get("format", 1) == 1:
        figures = {m: {f: BaselineFigure(v, v, v, 0.0, None, False) for f, v in figs.items()}
                   for m, figs in means.items()}
        return Baseline(path, tol, 1, True, None, None, figures, [])
    n_runs, ids, levels, runs = _v2_parts(data, path)
    spread, per_image = data["spread"], data.get("per_image") or {}
    if not isinstance(per_image, dict):
        raise PetsegError(f"baseline {path}: \"per_image\" is not an object")
    figures = {}
    for model, figs in means.items():
        spreads = _flat(spread.get(model, {}), f"spread of {model!r}", path)
        scores = _flat(per_image.get(model, {}), f"per_image of {model!r}", path)
        figures[model] = {}
        for fig, mean in figs.items():
            where = f"{model} {figure_label(fig)}"
            got = _spread_of(spreads.get(fig), mean, n_runs, where, path)
            img = _scores_of(scores.get(fig), mean, len(ids or ()), where, path) if got else None
            low, high, std = got or (mean, mean, 0.0)
            figures[model][fig] = BaselineFigure(mean, low, high, std, img, got is not None and n_runs > 1)
    return Baseline(path, tol, n_runs, False, ids, levels, figures, runs)


def resolve_tolerance(option: float | None, baseline: Baseline | Mapping[str, Any] | None) -> float:
    if option is not None:
        return float(option)
    tol = baseline.tolerance if isinstance(baseline, Baseline) else (baseline or {}).get("tolerance")
    return float(tol) if _number(tol) else DEFAULT_TOLERANCE
