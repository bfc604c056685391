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
  corruption errors normalised by a reference model (CE, relative CE; mCE and relative
  mCE per model);
- ``scores.families`` (only when the run's pixel perturbations span more than one
  corruption family, see ``PerturbationSpec.family``; perturbations with no family are
  one more group): per family its label, its perturbations in the run, all its installed
  members and whether the run has them all (``complete``), levels, and per model mean
  Dice, mCE and relative mCE over that family's perturbations in the run alone. The run-wide ``mce`` and
  ``relative_mce`` are then None: a mean over two benchmarks' corruptions is neither's
  figure. A run of one family has no ``families`` block: its run-wide figures are that
  family's.

Only levels present in the run are used; a figure that cannot be computed is ``None``.
Families come from run.json's ``perturbation_families`` (``{name: {"family", "label"}}``)
where the sweep recorded them, else from the installed plugins' specs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import PetsegError
from ..labels import CLASS_NAMES
from ..metrics import BUILTIN_METRICS, REDUCTIONS, SCORE_REDUCTION, divide, json_float, mean_over_classes, reduce, summarize
from ..results import CLEAN, RUN_FILE, RunFolder, RunRecord, frame_of, matrices, read_run_folder
from .model_views import describe_models

SCHEMA_VERSION = 1
#: The model corruption errors are normalised by unless told otherwise (ImageNet-C uses
#: AlexNet, the plain baseline of its day; here the plain U-Net).
DEFAULT_REFERENCE = None  # None: the installed model whose spec declares reference=True

REDUCTION_DESCRIPTIONS = {
    "dataset": "confusion matrices summed over all test pixels, then scored per class",
    "seed": ("per-image scores; per class the mean over images whose ground truth contains it "
             "(the seed's robustness_test.py); then the mean over classes"),
}

_METRICS = {spec.name: spec for spec in BUILTIN_METRICS}
#: Denominators below this are sums of rounded Dice values that cancel: treat as zero.
_EPS = 1e-12


# --- per model, from confusion matrices --------------------------------------------------

def mean_dice(cms: np.ndarray, reduction: str) -> float:
    """Class-mean Dice of a stack of confusion matrices ``[N, C, C]`` (NaN if empty)."""
    if len(cms) == 0:
        return float("nan")
    return mean_over_classes(reduce(_METRICS["dice"], cms, reduction))


def clean_metrics(cms: np.ndarray, n_boot: int = 500, seed: int = 0) -> dict:
    """mIoU, mDice, pixel accuracy, per-class IoU and Dice under both reductions, plus a
    bootstrap 95% CI of mDice (``n_boot`` replicates; none when 0): the evaluate
    summary, reshaped into summary.json's flatter blocks."""
    full = summarize(cms, _METRICS, n_boot if len(cms) else 0, seed, ci=("dice",))
    out: dict = {"n_images": full["n_images"]}
    for reduction in REDUCTIONS:
        got = full[reduction]
        block = {"miou": got["iou"]["mean"], "mdice": got["dice"]["mean"],
                 "pixel_accuracy": got["pixel_accuracy"]["mean"],
                 "iou": got["iou"]["per_class"], "dice": got["dice"]["per_class"]}
        if "ci95" in got["dice"]:
            block["mdice_ci95"] = got["dice"]["ci95"]
        out[reduction] = block
    return out


# --- robustness scores, from plain numbers -----------------------------------------------

def _finite_levels(curve: Mapping[int, float]) -> list[int]:
    return sorted(lv for lv, v in curve.items() if lv > 0 and v is not None and np.isfinite(v))


def curve_scores(clean: float | None, perturbed: Mapping[int, float]) -> dict:
    """Mean Dice over the perturbed levels, relative robustness and normalised AUC of one
    Dice-vs-level curve (``perturbed``: level -> Dice, levels > 0)."""
    levels = _finite_levels(perturbed)
    if not levels:
        return {"mean_dice": None, "relative_robustness": None, "auc": None, "levels": []}
    mean = float(np.mean([perturbed[lv] for lv in levels]))
    rel = None if clean is None else divide(mean, clean)
    auc = None
    if clean is not None and np.isfinite(clean):
        xs = np.array([0, *levels], dtype=np.float64)
        ys = np.array([clean, *[perturbed[lv] for lv in levels]], dtype=np.float64)
        auc = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / xs[-1])
    return {"mean_dice": json_float(mean), "relative_robustness": json_float(rel), "auc": json_float(auc),
            "levels": levels}


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
    ce = json_float(divide(np.sum(1 - d), np.sum(1 - r), _EPS))
    rel = None
    if clean is not None and ref_clean is not None and np.isfinite(clean) and np.isfinite(ref_clean):
        rel = json_float(divide(np.sum(clean - d), np.sum(ref_clean - r), _EPS))
    return ce, rel


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None when there is nothing or any term is undefined (a mean over a
    subset of perturbations would not be comparable)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def _aggregate(rows: Mapping[str, dict], perturbations: Sequence[str]) -> dict:
    """One model's figures averaged over perturbations."""
    scored = list(rows.values())
    agg = {}
    for key in ("mean_dice", "relative_robustness", "auc"):
        vals = [r[key] for r in scored if r[key] is not None]
        agg[key] = json_float(np.mean(vals)) if vals else None
    complete = all(p in rows for p in perturbations)
    agg["mce"] = json_float(_mean_or_none([r["ce"] for r in scored])) if complete else None
    agg["relative_mce"] = json_float(_mean_or_none([r["relative_ce"] for r in scored])) if complete else None
    return agg


def robustness_scores(clean: Mapping[str, float | None], curves: Mapping[str, Mapping[str, Mapping[int, float]]],
                      perturbations: Sequence[str], reference: str = DEFAULT_REFERENCE) -> dict:
    """Summary scores per model from plain numbers.

    ``clean``: model -> clean mean Dice; ``curves``: model -> perturbation -> {level: Dice}
    for the perturbed levels. Returns ``{model: {"perturbations": {p: {...}}, "mean_dice",
    "relative_robustness", "auc", "mce", "relative_mce"}}``; CE figures are None when the
    reference model is not in the run or a denominator is 0.
    """
    out = {}
    ref_curves = curves.get(reference) or {}
    for model, per_pert in curves.items():
        rows: dict[str, dict] = {}
        for p in (p for p in perturbations if p in per_pert):
            row = curve_scores(clean.get(model), per_pert[p])
            row["ce"], row["relative_ce"] = corruption_errors(clean.get(model), per_pert[p], clean.get(reference),
                                                              ref_curves.get(p))
            rows[p] = row
        out[model] = {"clean_mdice": json_float(clean.get(model)), "perturbations": rows,
                      **_aggregate(rows, perturbations)}
    return out


def perturbation_families(run: RunRecord | Mapping[str, Any], perturbations: Sequence[str]) -> dict[str, dict]:
    """``name -> {"family": id or None, "label": display name}``: as recorded in the run
    record, else as the installed plugin declares it (no family when it is not installed)."""
    recorded = RunRecord.of(run).perturbation_families
    specs: Mapping[str, Any] | None = None
    out = {}
    for p in perturbations:
        info = recorded.get(p)
        if info is None:
            if specs is None:
                from ..plugins import get_registry

                specs = get_registry().perturbations
            spec = specs.get(p)
            info = {"family": getattr(spec, "family", None), "label": getattr(spec, "family_label", "")}
        family = info.get("family")
        out[p] = {"family": family, "label": (info.get("label") or family) if family else ""}
    return out


def declared_members(family: str) -> list[str] | None:
    """Every installed perturbation of ``family`` (available or not), or None when no
    installed plugin declares it (a report re-rendered without the plugin)."""
    from ..plugins import get_registry

    names = sorted(n for n, s in get_registry().perturbations.items() if s.family == family)
    return names or None


def family_scores(models: Mapping[str, dict], perturbations: Sequence[str],
                  families: Mapping[str, Mapping[str, Any]], members=declared_members) -> dict | None:
    """Per family: ``{"label", "perturbations", "members", "complete", "levels", "models":
    {m: {"clean_mdice", "mean_dice", "mce", "relative_mce"}}}`` over that family's
    perturbations in the run only, from the per-perturbation rows of
    :func:`robustness_scores`. ``members(family)``: all the family's perturbations (None
    if unknown); ``complete`` says whether the run has them all (None if unknown). None
    when ``perturbations`` form one group (one family, or none declared): the run-wide
    figures are then its."""
    groups: dict[str | None, list[str]] = {}
    for p in perturbations:
        groups.setdefault((families.get(p) or {}).get("family"), []).append(p)
    if len(groups) < 2:
        return None
    out = {}
    for family, perts in groups.items():
        if family is None:
            continue
        per_model = {}
        for m, s in models.items():
            agg = _aggregate({p: s["perturbations"][p] for p in perts if p in s["perturbations"]}, perts)
            per_model[m] = {"clean_mdice": s["clean_mdice"], "mean_dice": agg["mean_dice"], "mce": agg["mce"],
                            "relative_mce": agg["relative_mce"]}
        levels = sorted({lv for s in models.values() for p in perts
                         for lv in (s["perturbations"].get(p) or {}).get("levels", [])})
        label = next((families[p]["label"] for p in perts if families[p].get("label")), family)
        declared = members(family)
        out[family] = {"label": label, "perturbations": perts, "members": declared,
                       "complete": None if declared is None else set(declared) <= set(perts), "levels": levels,
                       "models": per_model}
    return out


def score_block(clean: Mapping[str, float | None], curves: Mapping[str, Mapping[str, Mapping[int, float]]],
                perturbations: Sequence[str], reference: str, families: Mapping[str, Mapping[str, Any]]) -> dict:
    """summary.json's ``scores``: run-wide figures per model, and per family where the
    perturbations span several (the run-wide mCE is then None, see the module docstring)."""
    models = robustness_scores(clean, curves, perturbations, reference)
    block = {"reduction": SCORE_REDUCTION, "reference_model": reference, "reference_in_run": reference in clean,
             "models": models}
    per_family = family_scores(models, perturbations, families)
    if per_family is not None:
        for s in models.values():
            s["mce"] = s["relative_mce"] = None
        block["families"] = per_family
    return block


# --- from the long table ------------------------------------------------------------------

def run_order(df: pd.DataFrame, run: RunRecord) -> tuple[list[str], list[str]]:
    """Models and perturbations in the run record's order, then any others in the table."""
    models = [m for m in run.models if m in set(df["model"])]
    models += sorted(set(df["model"]) - set(models))
    perts_in_df = set(df["perturbation"]) - {CLEAN}
    perts = [p for p in run.perturbations if p in perts_in_df]
    perts += sorted(perts_in_df - set(perts))
    return models, perts


def level_values(run: RunRecord, df: pd.DataFrame, perturbation: str) -> tuple[str | None, dict[int, float]]:
    """(parameter name, level -> parameter value) from the run record, else from the cells."""
    params = run.perturbation_params.get(perturbation)
    if params:
        return params.get("param"), {lv: float(v) for lv, v in enumerate(params.get("values", []))}
    rows = df[df["perturbation"] == perturbation][["level", "value"]].drop_duplicates("level")
    return None, {int(lv): float(v) for lv, v in zip(rows["level"], rows["value"])}


def _model_curves(dm: pd.DataFrame, clean: dict | None, perts: Sequence[str]) -> dict:
    """perturbation -> level -> {reduction: mean Dice} of one model; level 0 is its clean cell."""
    curves = {}
    for p in perts:
        dp = dm[dm["perturbation"] == p]
        if not len(dp):
            continue
        by_level = {0: {r: clean[r]["mdice"] for r in REDUCTIONS}} if clean else {}
        for lv, cell in dp.groupby("level", sort=True):
            cms = matrices(cell)
            by_level[int(lv)] = {r: json_float(mean_dice(cms, r)) for r in REDUCTIONS}
        curves[p] = by_level
    return curves


def _perturbation_info(run: RunRecord, df: pd.DataFrame, perts: Sequence[str]) -> dict:
    info = {}
    for p in perts:
        param, values = level_values(run, df, p)
        info[p] = {"param": param, "values": [values.get(lv) for lv in range(max(values) + 1)] if values else []}
    return info


def build_summary(df: pd.DataFrame, run: RunRecord | Mapping[str, Any], n_boot: int = 500, boot_seed: int = 0,
                  reference_model: str = DEFAULT_REFERENCE) -> dict:
    """The whole summary (see the module docstring) as a JSON-ready dict."""
    run = RunRecord.of(run)
    if reference_model is None:
        from ..plugins import get_registry

        reference_model = get_registry().reference_model()
    models, perts = run_order(df, run)
    # Click perturbations (they move the click of models that take one) are kept out of
    # the pixel robustness figures: their curves are in "curves", listed apart.
    click_set = set(run.click_perturbations)
    click_perts = [p for p in run.perturbations if p in click_set]
    click_perts += [p for p in perts if p in click_set and p not in click_perts]
    perts = [p for p in perts if p not in click_set]
    from .adversarial_section import adversarial_block, attack_perturbations, level_values_of

    attacks = attack_perturbations(run, perts)  # per-model attacks: their own block, not corruptions
    perts = [p for p in perts if p not in attacks]
    clean: dict[str, dict | None] = {}
    curves: dict[str, dict] = {}
    for m in models:
        dm = df[df["model"] == m]
        clean_rows = dm[dm["perturbation"] == CLEAN]
        clean[m] = clean_metrics(matrices(clean_rows), n_boot, boot_seed) if len(clean_rows) else None
        curves[m] = _model_curves(dm, clean[m], perts + click_perts)
    views = describe_models(run, models)
    seed_clean = {m: (c[SCORE_REDUCTION]["mdice"] if c else None) for m, c in clean.items()}
    seed_curves = {m: {p: {lv: v[SCORE_REDUCTION] for lv, v in pts.items() if lv > 0} for p, pts in per.items()
                       if p not in click_set} for m, per in curves.items()}
    summary = {
        "schema": SCHEMA_VERSION,
        "classes": list(CLASS_NAMES),
        "models": models,
        # What produced each model's numbers, as the tables and plots label it.
        "model_labels": {m: views[m].describe() for m in models},
        "perturbations": perts,
        "click_perturbations": click_perts,
        "click_off_foreground": run.click_off_foreground,
        "perturbation_params": _perturbation_info(run, df, perts + click_perts),
        "n_images": len(run.image_ids or sorted(set(df["image_id"]))),
        "seed": run.seed if run.has("seed") else None,
        "void": run.void,
        "reductions": dict(REDUCTION_DESCRIPTIONS),
        "bootstrap": {"n_boot": n_boot, "seed": boot_seed, "level": 0.95, "over": "images"},
        "clean": clean,
        "curves": {m: {p: {"levels": sorted(pts), **{r: [pts[lv][r] for lv in sorted(pts)] for r in REDUCTIONS}}
                       for p, pts in per.items()} for m, per in curves.items()},
        "scores": score_block(seed_clean, seed_curves, perts, reference_model, perturbation_families(run, perts)),
    }
    if attacks:
        summary["adversarial"] = adversarial_block(df, run, models, attacks, level_values_of(run, attacks, df))
    if run.breed_groups:  # the training split's breed counts, recorded by the sweep
        from ..data.breeds import BreedGroups
        from .breed_tables import breed_summary

        summary["breeds"] = breed_summary(df[df["model"].isin(models)], BreedGroups.from_dict(run.breed_groups), perts)
    return summary


def load_summary(run_dir: Path, n_boot: int = 500, reference_model: str = DEFAULT_REFERENCE,
                 allow_partial: bool = True) -> tuple[RunRecord, dict]:
    """(run record, summary) of the run folder ``run_dir``, read and checked whole
    (:func:`petseg_bench.results.read_run_folder`). A run that lacks cells its record asks
    for is an error unless ``allow_partial``; its summary then lists them under
    ``missing_cells`` (paths relative to the run folder), a key only a partial run has."""
    run_dir = Path(run_dir)
    folder = read_run_folder(run_dir, inputs=_model_inputs)
    if not folder.cells:
        raise PetsegError(f"{run_dir} has no finished cell yet; run or resume the sweep first")
    if folder.missing and not allow_partial:
        raise PetsegError(partial_line(folder))
    summary = build_summary(frame_of(folder.cells), folder.record, n_boot=n_boot, reference_model=reference_model)
    if folder.missing:
        summary["missing_cells"] = [str(p.relative_to(run_dir)) for p in folder.missing_paths()]
    return folder.record, summary


def partial_line(folder: RunFolder) -> str:
    """One line: the run lacks cells (how many, the first) and how to go on."""
    first, n = folder.missing_paths()[0], len(folder.missing)
    more = f" and {n - 1} more" if n > 1 else ""
    shards = folder.record.missing_shards
    why = f" (shard{'s' if len(shards) > 1 else ''} {', '.join(shards)} missing)" if shards else ""
    return (f"{folder.run_dir} is a partial run{why}: {n} of the cells its {RUN_FILE} asks for are absent ({first} "
            f"not found{more}); finish it with `petseg-bench run ... --resume`, or pass --allow-partial to report "
            f"what is there")


def _model_inputs(model: str):
    """A model's inputs from its installed plugin (None when not installed)."""
    from ..plugins import get_registry

    spec = get_registry().models.get(model)
    return None if spec is None else spec.inputs


def baseline_values(summary: Mapping[str, Any]) -> dict:
    """The figures ``petseg-bench check`` compares: per model, clean mDice and each
    perturbation's mean Dice over its perturbed levels (seed reduction)."""
    models = {}
    for m, s in summary["scores"]["models"].items():
        models[m] = {"clean_mdice": s["clean_mdice"],
                     "perturbations": {p: r["mean_dice"] for p, r in s["perturbations"].items()}}
    return {"reduction": summary["scores"]["reduction"], "models": models}
