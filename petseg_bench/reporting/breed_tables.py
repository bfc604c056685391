"""The report's breed groups: how much the well-represented breeds flatter each model.

From a sweep's per-image cells and the run's recorded breed groups
(:class:`~petseg_bench.data.breeds.BreedGroups`, the training split's counts): per model
and group, the clean mIoU and mDice and each perturbation's mean Dice over its levels,
all in the dataset reduction (confusion summed over the group's images).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.breeds import THIN, WELL, BreedGroups, breed_of
from ..metrics import dice, iou, mean_over_classes, reduce
from ..results import CLEAN, matrices
from ..specs import MetricSpec
from .document import Table
from .fmt import DASH, fixed
from .model_views import ModelView, label

_IOU = MetricSpec("iou", iou, per_class=True)
_DICE = MetricSpec("dice", dice, per_class=True)
GROUPS = (WELL, THIN)


def _mean_score(spec: MetricSpec, cms: np.ndarray) -> float | None:
    if len(cms) == 0:
        return None
    value = float(mean_over_classes(reduce(spec, cms, "dataset")))
    return round(value, 6) if np.isfinite(value) else None


def breed_summary(df: pd.DataFrame, groups: BreedGroups, perturbations: Sequence[str]) -> dict:
    """``{"min_count", "groups": {group: {"breeds", "n_images"}}, "models": {model: {group:
    {"clean_miou", "clean_mdice", "perturbed_mdice": {p: mean over levels}}}}}``."""
    group_of = {i: groups.group_of(breed_of(i)) for i in df["image_id"].unique()}
    df = df.assign(group=df["image_id"].map(group_of))
    clean = df[df["perturbation"] == CLEAN]
    out: dict[str, Any] = {"reduction": "dataset", "min_count": groups.min_count, "groups": {}, "models": {},
                           "breeds": _per_breed(clean, groups)}
    ids = clean.drop_duplicates("image_id")
    for g in GROUPS:
        mine = ids[ids["group"] == g]
        out["groups"][g] = {"n_images": int(len(mine)),
                            "breeds": sorted({breed_of(i) for i in mine["image_id"]})}
    for model, dm in df.groupby("model", sort=False):
        out["models"][model] = {g: _group_scores(dm[dm["group"] == g], perturbations) for g in GROUPS}
    return out


def _per_breed(clean: pd.DataFrame, groups: BreedGroups) -> dict:
    """Clean mIoU of every model on every breed: ``{breed: {"group", "train_images",
    "n_images", "miou": {model: x}}}``, most test images first."""
    breed = clean["image_id"].map(breed_of)
    out = {}
    for b, n in breed.value_counts(sort=False).sort_index().sort_values(ascending=False, kind="stable").items():
        mine = clean[breed == b]
        out[b] = {"group": groups.group_of(b), "train_images": int(groups.train_counts.get(b, 0)),
                  "n_images": int(n) // max(1, mine["model"].nunique()),
                  "miou": {m: _mean_score(_IOU, matrices(dm)) for m, dm in mine.groupby("model", sort=False)}}
    return out


def _group_scores(dm: pd.DataFrame, perturbations: Sequence[str]) -> dict:
    clean = matrices(dm[dm["perturbation"] == CLEAN])
    per_pert = {}
    for p in perturbations:
        levels = dm[(dm["perturbation"] == p) & (dm["level"] > 0)]
        scores = [_mean_score(_DICE, matrices(lv)) for _, lv in levels.groupby("level")]
        scores = [s for s in scores if s is not None]
        per_pert[p] = round(float(np.mean(scores)), 6) if scores else None
    return {"clean_miou": _mean_score(_IOU, clean), "clean_mdice": _mean_score(_DICE, clean),
            "perturbed_mdice": per_pert}


def _gap(a: float | None, b: float | None) -> str:
    return DASH if a is None or b is None else f"{b - a:+.3f}"


def breed_table(breeds: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    """Per model: clean mIoU and the mean over perturbations of mean Dice, per group, and the gap."""
    rows = []
    for m, by_group in breeds["models"].items():
        well, thin = by_group[WELL], by_group[THIN]

        def mean_perturbed(g: Mapping[str, Any]) -> float | None:
            values = [v for v in g["perturbed_mdice"].values() if v is not None]
            return float(np.mean(values)) if values else None

        rows.append([label(models, m), fixed(well["clean_miou"]), fixed(thin["clean_miou"]),
                     _gap(well["clean_miou"], thin["clean_miou"]), fixed(mean_perturbed(well)),
                     fixed(mean_perturbed(thin)), _gap(mean_perturbed(well), mean_perturbed(thin))])
    g = breeds["groups"]
    caption = (f"Dataset reduction. Well represented: the {len(g[WELL]['breeds'])} breeds with at least "
               f"{breeds['min_count']} labelled training images ({g[WELL]['n_images']} test images: "
               f"{', '.join(g[WELL]['breeds']) or 'none'}); the other {len(g[THIN]['breeds'])} breeds have "
               f"{g[THIN]['n_images']} test images. Perturbed: each perturbation's mean Dice over its levels, "
               f"then the mean over perturbations. A negative gap is what the majority breeds flatter.")
    headers = ["model", "clean mIoU, well", "clean mIoU, other", "gap", "perturbed mDice, well",
               "perturbed mDice, other", "gap"]
    return Table(headers, rows, caption=caption)


def per_breed_table(breeds: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    """Clean mIoU per breed (rows) and model (columns)."""
    names = list(breeds["models"])
    rows = [[b, "yes" if e["group"] == WELL else "no", str(e["train_images"]), str(e["n_images"]),
             *[fixed(e["miou"].get(m)) for m in names]] for b, e in breeds["breeds"].items()]
    return Table(["breed", "well represented", "training images", "test images", *[label(models, m) for m in names]],
                 rows, caption="Clean mIoU per breed (dataset reduction over the breed's test images; a breed "
                               "with a handful of images gives a noisy figure).", text_columns=2)
