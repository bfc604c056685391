"""Segmentation metrics: pure functions of confusion matrices first, their reduction over
a split second, the JSON summary last.

A confusion matrix ``cm[t, p]`` counts pixels of ground-truth class ``t`` predicted as
``p``. Per-image matrices are computed at the original mask resolution; every summary
below derives from them, with two named reductions:

- ``dataset``: sum the matrices over all images of the split, then score per class;
- ``seed``: score each image, then for each class average over the images whose ground
  truth contains that class (the seed study's ``robustness_test.py``), then average the
  classes.

Absent classes, per the spec:

- per image: a class absent from the image's ground truth is NaN in that image's
  per-class scores: left out, never counted as 0 or 1 (even when predicted);
- ``dataset``: a class absent from the split's ground truth but predicted somewhere
  (union > 0) scores 0; absent from both ground truth and prediction, it is NaN and left
  out of the class mean (as torchmetrics and mmsegmentation do);
- ``seed``: a class that no image of the split contains scores 0 and counts 0 in the
  mean over the classes, as the seed's code does (its per-class count is clamped to 1
  over a zero sum); an :class:`AbsentClassWarning` says so, and :func:`summarize`
  records it under ``notes``.
"""

from __future__ import annotations

import warnings
from typing import Any, Collection, Mapping

import numpy as np

from .errors import PluginError, plugin_code
from .hookspecs import hookimpl
from .labels import CLASS_NAMES, IGNORE, N_CLASSES
from .specs import MetricSpec

REDUCTIONS = ("dataset", "seed")
#: The reduction every robustness score and curve uses (the seed study's robustness plots).
SCORE_REDUCTION = "seed"


class AbsentClassWarning(UserWarning):
    """A class no image of the split contains scored 0 in the seed reduction.

    Issued once per process per message (Python's default warning filter), not per
    call; :func:`summarize` also returns the same text under ``notes``."""


# --- the two helpers every score goes through ------------------------------------------

def divide(numer: Any, denom: Any, eps: float = 0.0) -> np.ndarray:
    """``numer / denom`` element-wise, NaN where ``|denom| <= eps``: a score with an
    empty denominator is undefined, never 0 or 1 (and never a numpy warning)."""
    numer = np.asarray(numer, dtype=np.float64)
    denom = np.asarray(denom, dtype=np.float64)
    undefined = np.abs(denom) <= eps
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(undefined, np.nan, numer / np.where(undefined, 1.0, denom))


def json_float(value: Any, digits: int = 6) -> float | None:
    """A JSON-ready number: rounded, ``None`` for None, NaN and infinity (JSON has none)."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None


# --- pure functions of confusion matrices -------------------------------------------

def confusion_matrix(pred: np.ndarray, target: np.ndarray, n_classes: int = N_CLASSES,
                     ignore_index: int = IGNORE) -> np.ndarray:
    """The ``[C, C]`` int64 confusion matrix of one image; ``ignore_index`` pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and mask {target.shape} differ in shape")
    codes = _pair_codes(pred, target, n_classes, ignore_index)
    if codes is not None:
        return _count_codes(codes, n_classes * n_classes).reshape(n_classes, n_classes)
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = t != ignore_index
    if not keep.all():
        t, p = t[keep], p[keep]
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _pair_codes(pred: np.ndarray, target: np.ndarray, n_classes: int, ignore_index: int) -> np.ndarray | None:
    """The sweep's case, uint8 maps and few classes: the codes ``t * C + p`` as uint8
    (no int64 copies, no mask), an ignored pixel's code past ``C * C`` where the caller
    drops it. None (the general path) for other dtypes, more classes, or a value that
    is no class (which must fail there as before)."""
    if pred.dtype != np.uint8 or target.dtype != np.uint8 or (n_classes + 1) * n_classes > 256 or not pred.size:
        return None
    if pred.max() >= n_classes:
        return None
    if target.max() >= n_classes:  # ignored pixels, or a value that is no class
        ignored = target == ignore_index
        if not ignored.any() or np.where(ignored, np.uint8(0), target).max() >= n_classes:
            return None
        target = np.where(ignored, np.uint8(n_classes), target)
    codes = target * np.uint8(n_classes)
    codes += pred
    return codes


def _count_codes(codes: np.ndarray, bins: int) -> np.ndarray:
    """How often each of ``0..bins-1`` occurs in uint8 ``codes`` (larger codes dropped),
    int64. OpenCV's histogram of a uint8 image is a table count, about twice as fast as
    bincount's cast to int64; its float32 counts are exact below 2**24 pixels."""
    if codes.size >= 2 ** 24:
        return np.bincount(codes.reshape(-1), minlength=bins)[:bins]
    import cv2  # imported here: listing the plugins stays fast

    # one column: OpenCV would read a 3-D array's last axis as channels
    hist = cv2.calcHist([np.ascontiguousarray(codes).reshape(-1, 1)], [0], None, [bins], [0, bins])
    return hist.reshape(-1).astype(np.int64)


def _parts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    gt = cm.sum(-1)  # pixels of each class in the ground truth
    pr = cm.sum(-2)  # pixels predicted as each class
    return tp, gt, pr, gt > 0


def iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU ``tp / (gt + pred - tp)``; NaN where the class is not in the ground truth."""
    tp, gt, pr, present = _parts(cm)
    # A zeroed denominator marks the absent classes, even those predicted somewhere.
    return divide(tp, np.where(present, gt + pr - tp, 0.0))


def dice(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice ``2 tp / (gt + pred)``; NaN where the class is not in the ground truth."""
    tp, gt, pr, present = _parts(cm)
    return divide(2 * tp, np.where(present, gt + pr, 0.0))


def pixel_accuracy(cm: np.ndarray) -> np.ndarray:
    """Fraction of (non-ignored) pixels predicted correctly."""
    cm = np.asarray(cm, dtype=np.float64)
    return divide(np.trace(cm, axis1=-2, axis2=-1), cm.sum((-2, -1)))


# --- reduction over a split -----------------------------------------------------------

def metric_values(spec: MetricSpec, cms: np.ndarray) -> np.ndarray:
    """``spec.fn(cms)`` as float64 ``[..., C]`` (per-class metrics) or ``[...]`` for
    matrices ``[..., C, C]``. A metric plugin that fails (or calls sys.exit), or answers
    anything else (None, text, another shape), is one line naming it; NaN is a score
    (a class absent from the ground truth)."""
    with plugin_code(f"metric {spec.name} failed"):
        out = spec.fn(cms)
    want = tuple(np.shape(cms)[:-2]) + ((np.shape(cms)[-1],) if spec.per_class else ())
    values = np.asarray(out) if out is not None else None
    if values is None or values.dtype.kind not in "biuf":
        got = "None" if values is None else f"{type(out).__name__} of {values.dtype}"
        raise PluginError(f"metric {spec.name} returned {got}, not numbers (expected shape {want})")
    if values.shape != want:
        raise PluginError(f"metric {spec.name} returned shape {values.shape} for matrices {np.shape(cms)}, "
                          f"expected {want}{' (one score per class)' if spec.per_class else ''}")
    return values.astype(np.float64, copy=False)


def reduce(spec: MetricSpec, cms: np.ndarray, reduction: str, *, warn: bool = True) -> np.ndarray:
    """One metric over a split: per class ``[C]`` (per-class metrics) or a scalar.

    Absent classes follow the module's rules: ``dataset`` scores 0 a class predicted
    but absent from the ground truth and leaves NaN one absent from both; ``seed``
    scores 0 a class no image contains (with an :class:`AbsentClassWarning` unless
    ``warn`` is False: the caller says it itself)."""
    cms = np.asarray(cms)
    if reduction == "dataset":
        total = cms.sum(0)
        value = metric_values(spec, total)
        return _dataset_absent_rule(spec, total, value)
    if reduction == "seed":
        scores = metric_values(spec, cms)  # [N, C] or [N]
        if scores.size == 0 or np.isnan(scores).all(axis=0).all():
            return np.full(scores.shape[1:], np.nan)
        value = _nanmean(scores, axis=0)
        if spec.per_class:
            never = absent_classes(cms)
            if never.any():
                if warn:
                    warnings.warn(seed_absent_note(never), AbsentClassWarning, stacklevel=2)
                value = np.where(never, 0.0, value)
        return value
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def absent_classes(cms: np.ndarray) -> np.ndarray:
    """``[C]`` bool: the classes that no image's ground truth contains (all False for no
    images: then there is nothing to score at all)."""
    cms = np.asarray(cms)
    if len(cms) == 0:
        return np.zeros(cms.shape[-1], bool)
    return cms.sum(axis=(0, -1)) == 0


def seed_absent_note(absent: np.ndarray) -> str:
    """The one-line warning for the classes the seed reduction scored 0."""
    names = [c for c, a in zip(CLASS_NAMES, absent) if a]
    it = "it" if len(names) == 1 else "them"
    return (f"no image of the split contains {' or '.join(names)}: the seed reduction scores {it} 0 and "
            f"counts {it} in the class mean, as the seed's code does (the dataset reduction leaves {it} "
            f"out unless predicted)")


def _dataset_absent_rule(spec: MetricSpec, total: np.ndarray, value: np.ndarray) -> np.ndarray:
    """0 where a per-class score is undefined because the class is absent from the ground
    truth but was predicted (``total`` is ``[..., C, C]``, ``value`` ``[..., C]``)."""
    if not spec.per_class:
        return value
    total = np.asarray(total, dtype=np.float64)
    predicted_only = (total.sum(-1) == 0) & (total.sum(-2) > 0)
    return np.where(predicted_only & np.isnan(value), 0.0, value)


def mean_over_classes(values: np.ndarray) -> float:
    """Class mean of a reduced per-class metric, leaving out the classes with no score
    (NaN: absent from both ground truth and prediction in the dataset reduction, absent
    from an image's ground truth in a per-image score). The seed reduction's absent
    classes already score 0, so they count."""
    values = np.asarray(values, dtype=np.float64)
    return float(_nanmean(values, axis=-1)) if values.ndim else float(values)


def bootstrap_ci(spec: MetricSpec, cms: np.ndarray, reduction: str, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI over images for the class-mean (or scalar) metric.

    Resampling is done with multinomial image counts, so each replicate is a weighted
    sum of the per-image matrices (dataset) or per-image scores (seed): no Python loop
    over replicates.
    """
    cms = np.asarray(cms, dtype=np.float64)
    n = len(cms)
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # [B, N]
    if reduction == "dataset":
        totals = np.einsum("bn,nij->bij", counts, cms)
        values = _dataset_absent_rule(spec, totals, metric_values(spec, totals))
    else:
        scores = metric_values(spec, cms)
        if scores.ndim == 1:
            scores = scores[:, None]
        valid = ~np.isnan(scores)
        values = divide(counts @ np.where(valid, scores, 0.0), counts @ valid)  # [B, C]
        if spec.per_class:  # a class no resampled image contains scores 0, as in reduce()
            in_gt = cms.sum(-1) > 0  # [N, C]
            values = np.where(counts @ in_gt == 0, 0.0, values)
        else:
            values = values[:, 0]
    if spec.per_class:
        values = _nanmean(values, axis=-1)
    lo, hi = np.nanpercentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return (float(lo), float(hi))


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    valid = ~np.isnan(values)
    return divide(np.where(valid, values, 0.0).sum(axis=axis), valid.sum(axis=axis))


# --- the JSON summary -------------------------------------------------------------------

def summarize(cms: np.ndarray, metrics: Mapping[str, MetricSpec], n_boot: int = 0,
              seed: int = 0, ci: Collection[str] | None = None) -> dict:
    """Every metric under both reductions, as a JSON-ready dict.

    ``{"dataset": {"iou": {"per_class": {...}, "mean": x, "ci95": [lo, hi]}, ...},
    "seed": {...}, "n_images": N}``; ``ci95`` only when ``n_boot > 0``, and then for
    the metrics named in ``ci`` (all when None: each interval costs ``n_boot`` replicates).
    """
    out: dict = {"n_images": int(len(cms))}
    notes: list[str] = []
    if any(spec.per_class for spec in metrics.values()) and absent_classes(cms).any():
        notes.append(seed_absent_note(absent_classes(cms)))
        warnings.warn(notes[-1], AbsentClassWarning, stacklevel=2)
    for reduction in REDUCTIONS:
        block = {}
        for name, spec in metrics.items():
            value = reduce(spec, cms, reduction, warn=False)  # said once above, not once per metric
            entry: dict = {}
            if spec.per_class:
                entry["per_class"] = {c: json_float(v) for c, v in zip(CLASS_NAMES, value)}
                entry["mean"] = json_float(mean_over_classes(value))
            else:
                entry["mean"] = json_float(value)
            if n_boot > 0 and (ci is None or name in ci):
                entry["ci95"] = [json_float(v) for v in bootstrap_ci(spec, cms, reduction, n_boot, seed)]
            block[name] = entry
        out[reduction] = block
    if notes:
        out["notes"] = notes
    return out


# --- the built-in metric plugin ---------------------------------------------------------

BUILTIN_METRICS = (
    MetricSpec("iou", iou, per_class=True, description="intersection over union; mean over classes = mIoU"),
    MetricSpec("dice", dice, per_class=True, description="Dice / F1 overlap; mean over classes = mDice"),
    MetricSpec("pixel_accuracy", pixel_accuracy, per_class=False, description="fraction of pixels correct"),
)


@hookimpl
def petseg_bench_metrics():
    return list(BUILTIN_METRICS)
