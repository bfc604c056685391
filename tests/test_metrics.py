"""Metrics from confusion matrices: hand-computed cases, the absent-class rules, the two
reductions, ignore index, torchmetrics agreement, bootstrap intervals."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from petseg_bench.metrics import (
    BUILTIN_METRICS,
    AbsentClassWarning,
    bootstrap_ci,
    confusion_matrix,
    dice,
    divide,
    iou,
    json_float,
    mean_over_classes,
    pixel_accuracy,
    reduce,
    summarize,
)

METRICS = {s.name: s for s in BUILTIN_METRICS}
NAN = float("nan")


def confusion_matrices(preds, targets) -> np.ndarray:
    """Stack of per-image confusion matrices ``[N, C, C]`` (images may differ in size)."""
    return np.stack([confusion_matrix(p, t) for p, t in zip(preds, targets, strict=True)])


def same(actual, expected) -> bool:
    """Element-wise equal to 1e-12, NaN only where NaN is expected."""
    return np.allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=0, atol=1e-12,
                       equal_nan=True)


# --- one image, by hand ---------------------------------------------------------------

T1 = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1]], np.uint8)
P1 = np.array([[0, 1, 1, 1],
               [0, 0, 0, 1]], np.uint8)
# gt 0 (4 px): 3 predicted 0, 1 predicted 1; gt 1 (4 px): 1 predicted 0, 3 predicted 1.
CM1 = np.array([[3, 1, 0],
                [1, 3, 0],
                [0, 0, 0]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(P1, T1)
    assert cm.shape == (3, 3) and cm.dtype == np.int64
    assert (cm == CM1).all()


def test_iou_dice_accuracy_by_hand():
    # IoU = tp / (gt + pred - tp) = 3 / (4 + 4 - 3); Dice = 2 tp / (gt + pred) = 6 / 8
    assert same(iou(CM1), [0.6, 0.6, NAN])
    assert same(dice(CM1), [0.75, 0.75, NAN])
    assert same(pixel_accuracy(CM1), 0.75)
    assert math.isclose(mean_over_classes(iou(CM1)), 0.6)  # dog absent: left out, not 0


def test_perfect_and_wrong_predictions():
    t = np.array([[0, 1], [2, 2]], np.uint8)
    cm = confusion_matrix(t, t)
    assert same(iou(cm), [1, 1, 1]) and same(dice(cm), [1, 1, 1]) and same(pixel_accuracy(cm), 1)
    wrong = np.array([[1, 2], [0, 0]], np.uint8)
    cm = confusion_matrix(wrong, t)
    assert same(iou(cm), [0, 0, 0]) and same(dice(cm), [0, 0, 0]) and same(pixel_accuracy(cm), 0)


def test_class_absent_from_ground_truth_is_nan_even_when_predicted():
    t = np.zeros((2, 2), np.uint8)
    p = np.array([[0, 2], [0, 0]], np.uint8)
    cm = confusion_matrix(p, t)
    assert (cm == [[3, 0, 1], [0, 0, 0], [0, 0, 0]]).all()
    # background: tp 3, gt 4, pred 3 -> IoU 3/4, Dice 6/7; dog predicted but absent -> NaN, not 0
    assert same(iou(cm), [0.75, NAN, NAN])
    assert same(dice(cm), [6 / 7, NAN, NAN])
    # and absent-but-correctly-not-predicted is NaN too, not 1
    cm_bg = confusion_matrix(t, t)
    assert same(iou(cm_bg), [1, NAN, NAN])


def test_ignore_index_is_skipped():
    t = np.array([[0, 255], [1, 255]], np.uint8)
    p = np.array([[0, 2], [1, 1]], np.uint8)
    cm = confusion_matrix(p, t)
    assert cm.sum() == 2
    assert (cm == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]).all()
    assert same(pixel_accuracy(cm), 1.0)
    assert same(iou(cm), [1, 1, NAN])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))


# --- the two reductions, by hand ------------------------------------------------------

# Image A: all background, predicted perfectly.
TA = np.zeros((2, 2), np.uint8)
PA = np.zeros((2, 2), np.uint8)
# Image B: a row of background, a row of cat; half the cat predicted as background.
TB = np.array([[0, 0, 0, 0],
               [1, 1, 1, 1]], np.uint8)
PB = np.array([[0, 0, 0, 0],
               [1, 1, 0, 0]], np.uint8)
CMS = np.stack([np.array([[4, 0, 0], [0, 0, 0], [0, 0, 0]]),
                np.array([[4, 0, 0], [2, 2, 0], [0, 0, 0]])])


def test_two_image_matrices():
    assert (confusion_matrices([PA, PB], [TA, TB]) == CMS).all()


def test_per_image_scores_leave_absent_classes_out():
    # A: IoU bg 1, cat/dog absent; B: bg 4/(4+6-4) = 2/3, cat 2/(4+2-2) = 1/2
    assert same(iou(CMS), [[1, NAN, NAN], [2 / 3, 0.5, NAN]])
    # Dice A: bg 1; B: bg 8/(4+6) = 0.8, cat 4/(4+2) = 2/3
    assert same(dice(CMS), [[1, NAN, NAN], [0.8, 2 / 3, NAN]])
    assert same(pixel_accuracy(CMS), [1.0, 0.75])


def test_dataset_reduction_by_hand():
    # summed: [[8,0,0],[2,2,0],[0,0,0]]
    assert same(reduce(METRICS["iou"], CMS, "dataset"), [8 / 10, 2 / 4, NAN])
    assert same(reduce(METRICS["dice"], CMS, "dataset"), [16 / 18, 4 / 6, NAN])
    assert same(reduce(METRICS["pixel_accuracy"], CMS, "dataset"), 10 / 12)
    assert math.isclose(mean_over_classes(reduce(METRICS["iou"], CMS, "dataset")), (0.8 + 0.5) / 2)


def test_seed_reduction_by_hand():
    # bg: mean over A and B; cat: only B has cat (A is left out, not scored 0 or 1);
    # dog: no image has a dog, so it scores 0 and counts 0 in the class mean (the seed's rule)
    with pytest.warns(AbsentClassWarning, match="contains dog"):
        seed_iou = reduce(METRICS["iou"], CMS, "seed")
    assert same(seed_iou, [(1 + 2 / 3) / 2, 0.5, 0.0])
    with pytest.warns(AbsentClassWarning):
        assert same(reduce(METRICS["dice"], CMS, "seed"), [(1 + 0.8) / 2, 2 / 3, 0.0])
    assert same(reduce(METRICS["pixel_accuracy"], CMS, "seed"), (1 + 0.75) / 2)  # not per class: no rule
    assert math.isclose(mean_over_classes(seed_iou), (5 / 6 + 0.5 + 0) / 3)


@pytest.mark.filterwarnings("ignore::petseg_bench.metrics.AbsentClassWarning")
def test_reductions_differ():
    for name in METRICS:
        d = np.atleast_1d(reduce(METRICS[name], CMS, "dataset"))
        s = np.atleast_1d(reduce(METRICS[name], CMS, "seed"))
        assert not same(d, s), name


def test_unknown_reduction_raises():
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce(METRICS["iou"], CMS, "macro")


def test_summarize_names_both_reductions():
    with pytest.warns(AbsentClassWarning) as caught:
        out = summarize(CMS, METRICS)
    assert len(caught) == 1  # once per summary, not once per metric and reduction
    assert out["n_images"] == 2
    assert set(out) == {"n_images", "dataset", "seed", "notes"}
    assert len(out["notes"]) == 1 and "dog" in out["notes"][0] and "\n" not in out["notes"][0]
    for reduction in ("dataset", "seed"):
        assert set(out[reduction]) == set(METRICS)
        assert set(out[reduction]["iou"]["per_class"]) == {"background", "cat", "dog"}
        assert "ci95" not in out[reduction]["iou"]
    assert out["dataset"]["iou"]["per_class"]["dog"] is None  # absent from gt and prediction: NaN -> null
    assert out["seed"]["iou"]["per_class"]["dog"] == 0.0  # in no image: 0, as the seed scores it
    assert out["dataset"]["iou"]["mean"] == pytest.approx(0.65, abs=1e-6)
    assert out["seed"]["iou"]["mean"] == pytest.approx((5 / 6 + 0.5) / 3, abs=1e-6)
    assert out["dataset"]["pixel_accuracy"]["mean"] == pytest.approx(10 / 12, abs=1e-6)
    assert out["seed"]["pixel_accuracy"]["mean"] == pytest.approx(0.875, abs=1e-6)
    with pytest.warns(AbsentClassWarning):
        with_ci = summarize(CMS, METRICS, n_boot=50, seed=1)
    lo, hi = with_ci["seed"]["dice"]["ci95"]
    assert lo <= hi


def test_summarize_has_no_notes_when_every_class_is_somewhere():
    cms = confusion_matrices(*random_maps(5, seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AbsentClassWarning)
        out = summarize(cms, METRICS)
    assert set(out) == {"n_images", "dataset", "seed"}


@pytest.mark.filterwarnings("ignore::petseg_bench.metrics.AbsentClassWarning")
def test_summarize_bootstraps_only_the_metrics_asked_for():
    out = summarize(CMS, METRICS, n_boot=50, seed=1, ci=("dice",))
    for reduction in ("dataset", "seed"):
        assert "ci95" in out[reduction]["dice"]
        assert "ci95" not in out[reduction]["iou"] and "ci95" not in out[reduction]["pixel_accuracy"]
    # the same generator seed as a full summary: the same interval
    assert out["seed"]["dice"] == summarize(CMS, METRICS, n_boot=50, seed=1)["seed"]["dice"]


def test_divide_is_nan_where_the_denominator_is_empty():
    assert same(divide([1, 2, 0], [2, 0, 0]), [0.5, NAN, NAN])
    assert same(divide(1e-13, 1e-13, eps=1e-12), NAN)
    assert same(divide(3, 4), 0.75)


def test_json_float():
    assert json_float(None) is None and json_float(NAN) is None and json_float(float("inf")) is None
    assert json_float(np.float64(2 / 3)) == 0.666667
    assert json_float(np.array(0.5)) == 0.5


# --- absent classes: the spec's three rules, by hand -----------------------------------

def cm_of(gt: dict, pred: dict) -> np.ndarray:
    """A 3x3 matrix from {(t, p): count}."""
    cm = np.zeros((3, 3), np.int64)
    for (t, p), n in {**gt, **pred}.items():
        cm[t, p] = n
    return cm


# (case, per-image matrices, dataset IoU per class, seed IoU per class, seed warns)
ABSENT_CASES = [
    # dog in no image, never predicted: dataset leaves it out (NaN); seed scores it 0
    ("dog absent, not predicted",
     [cm_of({(0, 0): 3, (1, 1): 1}, {})],
     [1.0, 1.0, NAN], [1.0, 1.0, 0.0], True),
    # dog in no image but predicted once: dataset scores it 0 (union 1); per image left out,
    # so seed still scores it 0 because no image contains it
    ("dog absent, predicted",
     [cm_of({(0, 0): 3, (1, 1): 1}, {(0, 2): 1})],
     [0.75, 1.0, 0.0], [0.75, 1.0, 0.0], True),
    # dog in one image, absent from the other where it is predicted: per image the second
    # leaves dog out (NaN, not 0), so seed = the first image's dog IoU
    ("dog in one image, predicted in the other",
     [cm_of({(0, 0): 2, (2, 2): 2}, {}), cm_of({(0, 0): 1, (1, 1): 2}, {(0, 2): 1})],
     [3 / 4, 1.0, 2 / 3], [(1.0 + 0.5) / 2, 1.0, 1.0], False),
    # cat and dog both in no image: both 0 in the seed mean, both NaN in the dataset one
    ("only background",
     [cm_of({(0, 0): 4}, {}), cm_of({(0, 0): 2}, {(0, 1): 2})],
     [6 / 8, 0.0, NAN], [(1.0 + 0.5) / 2, 0.0, 0.0], True),
]


@pytest.mark.parametrize("case, cms, dataset_iou, seed_iou, warns", ABSENT_CASES, ids=[c[0] for c in ABSENT_CASES])
def test_absent_class_rules(case, cms, dataset_iou, seed_iou, warns):
    cms = np.stack(cms)
    assert same(reduce(METRICS["iou"], cms, "dataset"), dataset_iou)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = reduce(METRICS["iou"], cms, "seed")
    assert same(value, seed_iou)
    absent = [w for w in caught if issubclass(w.category, AbsentClassWarning)]
    assert len(absent) == int(warns)
    if warns:
        assert "\n" not in str(absent[0].message)
    # the class means: dataset leaves NaN out, seed counts every class (the 0s included)
    assert math.isclose(mean_over_classes(reduce(METRICS["iou"], cms, "dataset")),
                        np.nanmean(dataset_iou))
    assert math.isclose(mean_over_classes(value), np.mean(seed_iou))


def test_per_image_scores_keep_leaving_absent_classes_out():
    # dog predicted in an image without dog: NaN for that image, not 0
    cm = cm_of({(0, 0): 3}, {(0, 2): 1})
    assert same(iou(cm), [0.75, NAN, NAN]) and same(dice(cm), [6 / 7, NAN, NAN])


def test_seed_warning_is_shown_once_per_message_under_default_filters():
    cms = np.stack(ABSENT_CASES[0][1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(5):
            reduce(METRICS["iou"], cms, "seed")
    assert len([w for w in caught if issubclass(w.category, AbsentClassWarning)]) == 1


def test_absent_class_rules_in_the_bootstrap():
    # every replicate of a split without dog scores dog 0 (seed) / leaves it out (dataset),
    # so the intervals hold the point estimates
    cms = np.stack([cm_of({(0, 0): 3, (1, 1): 1}, {(0, 2): 1}), cm_of({(0, 0): 2, (1, 1): 2}, {}),
                    cm_of({(0, 0): 4, (1, 0): 1, (1, 1): 1}, {})])
    for reduction in ("dataset", "seed"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AbsentClassWarning)
            point = mean_over_classes(reduce(METRICS["iou"], cms, reduction))
        lo, hi = bootstrap_ci(METRICS["iou"], cms, reduction, n_boot=200, seed=0)
        assert lo <= point <= hi, reduction
    # seed: dog is 0 in every replicate, so the class mean never exceeds 2/3
    assert bootstrap_ci(METRICS["iou"], cms, "seed", n_boot=200, seed=0)[1] <= 2 / 3 + 1e-12


# --- against torchmetrics -------------------------------------------------------------

def random_maps(n: int, seed: int, void: bool = True):
    """Random prediction/target pairs of different sizes; 70% of predictions right."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        h, w = rng.integers(5, 12, size=2)
        t = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
        p = np.where(rng.random((h, w)) < 0.7, t, rng.integers(0, 3, size=(h, w))).astype(np.uint8)
        if void:
            t[rng.random((h, w)) < 0.1] = 255
        preds.append(p)
        targets.append(t)
    return preds, targets


def test_dataset_reduction_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("torchmetrics.functional.classification")
    preds, targets = random_maps(4, seed=3)
    cms = confusion_matrices(preds, targets)
    p = torch.from_numpy(np.concatenate([x.reshape(-1) for x in preds]).astype(np.int64))
    t = torch.from_numpy(np.concatenate([x.reshape(-1) for x in targets]).astype(np.int64))
    kw = dict(num_classes=3, ignore_index=255)
    tm_iou = F.multiclass_jaccard_index(p, t, average=None, **kw).numpy()
    tm_dice = F.multiclass_f1_score(p, t, average=None, **kw).numpy()
    tm_acc = float(F.multiclass_accuracy(p, t, average="micro", **kw))
    np.testing.assert_allclose(reduce(METRICS["iou"], cms, "dataset"), tm_iou, rtol=1e-5)
    np.testing.assert_allclose(reduce(METRICS["dice"], cms, "dataset"), tm_dice, rtol=1e-5)
    assert reduce(METRICS["pixel_accuracy"], cms, "dataset") == pytest.approx(tm_acc, rel=1e-5)


def test_dataset_reduction_matches_torchmetrics_with_absent_classes():
    """A class predicted but absent from the ground truth: 0 in both, per class and in the
    macro mean; a class absent from both: left out of the macro mean by both."""
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("torchmetrics.functional.classification")
    t = np.array([0, 0, 0, 0, 1, 1], np.uint8)
    kw = dict(num_classes=3)
    for p in (np.array([0, 2, 0, 0, 1, 0], np.uint8),   # dog predicted, never in the gt
              np.array([0, 1, 0, 0, 1, 0], np.uint8)):  # dog neither in gt nor predicted
        cms = confusion_matrix(p, t)[None]
        pt, tt = torch.from_numpy(p.astype(np.int64)), torch.from_numpy(t.astype(np.int64))
        for name, fn in (("iou", F.multiclass_jaccard_index), ("dice", F.multiclass_f1_score)):
            ours = reduce(METRICS[name], cms, "dataset")
            per_class = fn(pt, tt, average=None, **kw).numpy()
            scored = ~np.isnan(ours)
            np.testing.assert_allclose(ours[scored], per_class[scored], rtol=1e-6)
            assert mean_over_classes(ours) == pytest.approx(float(fn(pt, tt, average="macro", **kw)), rel=1e-6)


# --- bootstrap ------------------------------------------------------------------------

def point_estimate(spec, cms, reduction) -> float:
    value = reduce(spec, cms, reduction)
    return mean_over_classes(value) if spec.per_class else float(value)


@pytest.mark.parametrize("reduction", ["dataset", "seed"])
@pytest.mark.parametrize("name", sorted(METRICS))
def test_bootstrap_ci_contains_point_and_is_seeded(name, reduction):
    spec = METRICS[name]
    cms = confusion_matrices(*random_maps(30, seed=11))
    lo, hi = bootstrap_ci(spec, cms, reduction, n_boot=300, seed=4)
    assert lo <= point_estimate(spec, cms, reduction) <= hi
    assert lo < hi
    assert bootstrap_ci(spec, cms, reduction, n_boot=300, seed=4) == (lo, hi)
    assert bootstrap_ci(spec, cms, reduction, n_boot=300, seed=5) != (lo, hi)


@pytest.mark.parametrize("reduction", ["dataset", "seed"])
def test_bootstrap_ci_narrows_with_more_images(reduction):
    spec = METRICS["dice"]
    few = confusion_matrices(*random_maps(15, seed=21, void=False))
    many = confusion_matrices(*random_maps(400, seed=22, void=False))
    lo_f, hi_f = bootstrap_ci(spec, few, reduction, n_boot=300, seed=0)
    lo_m, hi_m = bootstrap_ci(spec, many, reduction, n_boot=300, seed=0)
    assert hi_m - lo_m < (hi_f - lo_f) / 2


def test_bootstrap_of_no_images_is_nan():
    lo, hi = bootstrap_ci(METRICS["iou"], np.zeros((0, 3, 3)), "dataset")
    assert math.isnan(lo) and math.isnan(hi)
