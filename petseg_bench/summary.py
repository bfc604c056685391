"""A sweep run's figures as one JSON-ready dict (the report's ``summary.json``).

Pure functions of the long table of :func:`petseg_bench.results.load_run` and the run
record (``run.json``):

- ``clean``: per model, every built-in metric on the clean test images under both
  reductions (``dataset``, ``seed``), with a bootstrap 95% CI for mean Dice;
- ``curves``: per model x perturbation, mean Dice at every level present in the run
  under both reductions; level 0 is the model's clean cell, shared by every perturbation;
- ``scores``: per model x perturbation, summary figures on the ``seed`` reduction's mean
  Dice (the seed study's robustness plots used it): mean over the perturbed levels,
  relative robustness, normalised area under the Dice-vs-level curve, and the ImageNet-C
  corruption errors normalised by U-Net (CE, relative CE; mCE and relative mCE per model).

Only levels present in the run are used; a figure that cannot be computed is ``None``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import CLASS_NAMES
from .metrics import BUILTIN_METRICS, REDUCTIONS, bootstrap_ci, mean_over_classes, reduce
from .results import CLEAN, matrices

SCHEMA_VERSION = 1
#: The reduction every robustness score uses (the seed study's robustness plots).
SCORE_REDUCTION = "seed"
#: The model corruption errors are normalised by (ImageNet-C uses AlexNet; we use U-Net).
REFERENCE_MODEL = "unet"

REDUCTION_DESCRIPTIONS = {
    "dataset": "confusion matrices summed over all test pixels, then scored per class",
    "seed": ("per-image scores; per class the mean over images whose ground truth contains it "
             "(the seed's robustness_test.py); then the mean over classes"),
}

_METRICS = {spec.name: spec for spec in BUILTIN_METRICS}


# --- small pure helpers -----------------------------------------------------------------

def num(value: Any, digits: int = 6) -> float | None:
    """A JSON-ready float: rounded, ``None`` for NaN/None."""
    if value is None:
        return None
    value = float(value)
    return None if not np.isfinite(value) else round(value, digits)


def mean_dice(cms: np.ndarray, reduction: str) -> float:
    """Class-mean Dice of a stack of confusion matrices ``[N, C, C]`` (NaN if empty)."""
    if len(cms) == 0:
        return float("nan")
    return mean_over_classes(reduce(_METRICS["dice"], cms, reduction))


def clean_metrics(cms: np.ndarray, n_boot: int = 500, seed: int = 0) -> dict:
    """mIoU, mDice, pixel accuracy, per-class IoU and Dice under both reductions, plus a
    bootstrap 95% CI of mDice (``n_boot`` replicates; none when 0)."""
    out: dict = {"n_images": int(len(cms))}
    for reduction in REDUCTIONS:
        iou = reduce(_METRICS["iou"], cms, reduction)
        dice = reduce(_METRICS["dice"], cms, reduction)
        block = {
            "miou": num(mean_over_classes(iou)),
            "mdice": num(mean_over_classes(dice)),
            "pixel_accuracy": num(reduce(_METRICS["pixel_accuracy"], cms, reduction)),
            "iou": {c: num(v) for c, v in zip(CLASS_NAMES, iou)},
            "dice": {c: num(v) for c, v in zip(CLASS_NAMES, dice)},
        }
        if n_boot > 0 and len(cms):
            block["mdice_ci95"] = [num(v) for v in bootstrap_ci(_METRICS["dice"], cms, reduction, n_boot, seed)]
        out[reduction] = block
    return out


def curve_scores(clean: float | None, perturbed: Mapping[int, float]) -> dict:
    """Mean Dice over the perturbed levels, relative robustness and normalised AUC of one
    Dice-vs-level curve (``perturbed``: level -> Dice, levels > 0)."""
    levels = sorted(lv for lv, v in perturbed.items() if lv > 0 and v is not None and np.isfinite(v))
    if not levels:
        return {"mean_dice": None, "relative_robustness": None, "auc": None, "levels": []}
    mean = float(np.mean([perturbed[lv] for lv in levels]))
    rel = mean / clean if clean else None
    auc = None
    if clean is not None and np.isfinite(clean):
        xs = np.array([0, *levels], dtype=np.float64)
        ys = np.array([clean, *[perturbed[lv] for lv in levels]], dtype=np.float64)
        auc = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / xs[-1])
    return {"mean_dice": num(mean), "relative_robustness": num(rel), "auc": num(auc), "levels": levels}


def corruption_errors(clean: float | None, perturbed: Mapping[int, float], ref_clean: float | None,
                      ref_perturbed: Mapping[int, float] | None) -> tuple[float | None, float | None]:
    """ImageNet-C CE and relative CE of one model on one perturbation, against the
    reference model, over the perturbed levels both have:

    ``CE = sum_l (1 - D_l) / sum_l (1 - D^ref_l)``,
    ``relative CE = sum_l (D_clean - D_l) / sum_l (D^ref_clean - D^ref_l)``.
    """
    if ref_perturbed is None:
        return None, None
    levels = sorted(set(_finite_levels(perturbed)) & set(_finite_levels(ref_perturbed)))
    if not levels:
        return None, None
    d = np.array([perturbed[lv] for lv in levels])
    r = np.array([ref_perturbed[lv] for lv in levels])
    ce = _ratio(np.sum(1 - d), np.sum(1 - r))
    rel = None
    if clean is not None and ref_clean is not None and np.isfinite(clean) and np.isfinite(ref_clean):
        rel = _ratio(np.sum(clean - d), np.sum(ref_clean - r))
    return ce, rel


def _finite_levels(curve: Mapping[int, float]) -> list[int]:
    return [lv for lv, v in curve.items() if lv > 0 and v is not None and np.isfinite(v)]


def _ratio(a: float, b: float) -> float | None:
    return None if abs(b) < 1e-12 else float(a / b)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None when there is nothing or any term is undefined (a mean over a
    subset of perturbations would not be comparable)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def robustness_scores(clean: Mapping[str, float | None], curves: Mapping[str, Mapping[str, Mapping[int, float]]],
                      perturbations: Sequence[str], reference: str = REFERENCE_MODEL) -> dict:
    """Summary scores per model from plain numbers.

    ``clean``: model -> clean mean Dice; ``curves``: model -> perturbation -> {level: Dice}
    for the perturbed levels. Returns ``{model: {"perturbations": {p: {...}}, "mean_dice",
    "relative_robustness", "auc", "mce", "relative_mce"}}``; CE figures are None when the
    reference model is not in the run or a denominator is 0.
    """
    out = {}
    ref_curves = curves.get(reference)
    for model, per_pert in curves.items():
        rows: dict[str, dict] = {}
        for p in perturbations:
            if p not in per_pert:
                continue
            row = curve_scores(clean.get(model), per_pert[p])
            ce, rel_ce = corruption_errors(clean.get(model), per_pert[p], clean.get(reference),
                                           None if ref_curves is None else ref_curves.get(p))
            row["ce"], row["relative_ce"] = num(ce), num(rel_ce)
            rows[p] = row
        scored = list(rows.values())
        agg = {}
        for key in ("mean_dice", "relative_robustness", "auc"):
            vals = [r[key] for r in scored if r[key] is not None]
            agg[key] = num(np.mean(vals)) if vals else None
        missing = [p for p in perturbations if p not in rows]
        agg["mce"] = None if missing else num(_mean_or_none([r["ce"] for r in scored]))
        agg["relative_mce"] = None if missing else num(_mean_or_none([r["relative_ce"] for r in scored]))
        out[model] = {"clean_mdice": num(clean.get(model)), "perturbations": rows, **agg}
    return out


# --- from the long table ------------------------------------------------------------------

def run_order(df: pd.DataFrame, run: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Models and perturbations in the run record's order, then any others in the table."""
    models = [m for m in run.get("models", []) if m in set(df["model"])]
    models += sorted(set(df["model"]) - set(models))
    perts_in_df = set(df["perturbation"]) - {CLEAN}
    perts = [p for p in run.get("perturbations", []) if p in perts_in_df]
    perts += sorted(perts_in_df - set(perts))
    return models, perts


def level_values(run: Mapping[str, Any], df: pd.DataFrame, perturbation: str) -> tuple[str | None, dict[int, float]]:
    """(parameter name, level -> parameter value) from the run record, else from the cells."""
    params = (run.get("perturbation_params") or {}).get(perturbation)
    if params:
        return params.get("param"), {lv: float(v) for lv, v in enumerate(params.get("values", []))}
    rows = df[df["perturbation"] == perturbation][["level", "value"]].drop_duplicates("level")
    return None, {int(lv): float(v) for lv, v in zip(rows["level"], rows["value"])}


def build_summary(df: pd.DataFrame, run: Mapping[str, Any], n_boot: int = 500, boot_seed: int = 0) -> dict:
    """The whole summary (see the module docstring) as a JSON-ready dict."""
    models, perts = run_order(df, run)
    clean: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    for m in models:
        dm = df[df["model"] == m]
        clean_rows = dm[dm["perturbation"] == CLEAN]
        clean[m] = clean_metrics(matrices(clean_rows), n_boot, boot_seed) if len(clean_rows) else None
        curves[m] = {}
        for p in perts:
            dp = dm[dm["perturbation"] == p]
            if not len(dp) and not len(clean_rows):
                continue
            points = {}
            if len(clean_rows):
                points[0] = {r: clean[m][r]["mdice"] for r in REDUCTIONS}
            for lv, cell in dp.groupby("level", sort=True):
                cms = matrices(cell)
                points[int(lv)] = {r: num(mean_dice(cms, r)) for r in REDUCTIONS}
            if len(dp):
                curves[m][p] = points

    perturbation_info = {}
    for p in perts:
        param, values = level_values(run, df, p)
        perturbation_info[p] = {"param": param, "values": [values.get(lv) for lv in range(max(values) + 1)] if values else []}

    curve_json = {
        m: {p: {"levels": sorted(pts), **{r: [pts[lv][r] for lv in sorted(pts)] for r in REDUCTIONS}}
            for p, pts in per.items()}
        for m, per in curves.items()
    }
    seed_clean = {m: (c[SCORE_REDUCTION]["mdice"] if c else None) for m, c in clean.items()}
    seed_curves = {m: {p: {lv: v[SCORE_REDUCTION] for lv, v in pts.items() if lv > 0} for p, pts in per.items()}
                   for m, per in curves.items()}
    scores = robustness_scores(seed_clean, seed_curves, perts)

    ids = run.get("image_ids") or sorted(set(df["image_id"]))
    return {
        "schema": SCHEMA_VERSION,
        "classes": list(CLASS_NAMES),
        "models": models,
        "perturbations": perts,
        "perturbation_params": perturbation_info,
        "n_images": len(ids),
        "seed": run.get("seed"),
        "void": run.get("void"),
        "reductions": dict(REDUCTION_DESCRIPTIONS),
        "bootstrap": {"n_boot": n_boot, "seed": boot_seed, "level": 0.95, "over": "images"},
        "clean": clean,
        "curves": curve_json,
        "scores": {"reduction": SCORE_REDUCTION, "reference_model": REFERENCE_MODEL,
                   "reference_in_run": REFERENCE_MODEL in models, "models": scores},
    }


def baseline_values(summary: Mapping[str, Any]) -> dict:
    """The figures ``petseg-bench check`` compares: per model, clean mDice and each
    perturbation's mean Dice over its perturbed levels (seed reduction)."""
    models = {}
    for m, s in summary["scores"]["models"].items():
        models[m] = {"clean_mdice": s["clean_mdice"],
                     "perturbations": {p: r["mean_dice"] for p, r in s["perturbations"].items()}}
    return {"reduction": summary["scores"]["reduction"], "models": models}
