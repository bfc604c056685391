"""The faster per-image paths of issue 13 give exactly what the formulas they replaced give.

Each test pins a new computation to the old one, written out here as it was: uint8 pair
codes counted by a histogram against the int64 bincount, the argmax over contiguous
class planes against the boolean-index loop, the batched letterbox in channels_last
against the stacked NCHW copy, the scoring split over threads against the per-image
loop, salt-and-pepper's masked copy against its boolean assignments. Tiny synthetic
arrays of odd sizes, ties and ignored pixels included; seconds in all.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from petseg_bench.data.points import eval_click
from petseg_bench.data.letterbox import Letterbox
from petseg_bench.engine import runtime
from petseg_bench.engine.inference import score
from petseg_bench.engine.inputs import normalise
from petseg_bench.engine.predictor import argmax_last, letterbox_batch, letterbox_clicks, restore
from petseg_bench.metrics import confusion_matrix
from petseg_bench_perturbations.noise import _seed_round_trip_lut, salt_and_pepper

SHAPES = [(1, 1), (1, 7), (5, 1), (13, 17), (37, 23), (64, 48)]


def old_confusion(pred, target, n_classes=3, ignore_index=255):
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = t != ignore_index
    if not keep.all():
        t, p = t[keep], p[keep]
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def old_argmax(x):
    idx = np.zeros(x.shape[:-1], np.uint8)
    best = x[..., 0].copy()
    for c in range(1, x.shape[-1]):
        better = x[..., c] > best
        idx[better] = c
        np.maximum(best, x[..., c], out=best)
    return idx


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # in_parallel splits the images over two threads
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("n_classes", [1, 2, 3, 5, 15])
@pytest.mark.parametrize("shape", SHAPES)
def test_confusion_codes_match_the_int64_bincount(n_classes, shape):
    rng = np.random.default_rng(n_classes * 100 + shape[0])
    pred = rng.integers(0, n_classes, shape, dtype=np.uint8)
    target = rng.integers(0, n_classes, shape, dtype=np.uint8)
    assert np.array_equal(confusion_matrix(pred, target, n_classes), old_confusion(pred, target, n_classes))
    target[rng.random(shape) < 0.3] = 255  # ignored pixels (all of them, for a 1x1 map, now and then)
    got = confusion_matrix(pred, target, n_classes)
    assert got.dtype == np.int64 and np.array_equal(got, old_confusion(pred, target, n_classes))


def test_confusion_of_other_dtypes_and_values_takes_the_old_path():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (9, 11), dtype=np.uint8)
    target = rng.integers(0, 3, (9, 11), dtype=np.uint8)
    for p, t in [(pred.astype(np.int64), target), (pred, target.astype(np.int32)), (pred[:, ::2], target[:, ::2])]:
        assert np.array_equal(confusion_matrix(p, t), old_confusion(p, t))
    bad = target.copy()
    bad[0, 0] = 88  # 88 * 3 wraps to 8 in uint8: must fail as before, never be counted
    with pytest.raises(ValueError):
        old_confusion(pred, bad)
    with pytest.raises(ValueError):
        confusion_matrix(pred, bad)
    wide = pred.copy()
    wide[0, 0] = 4  # a prediction that is no class counts where the old formula put it
    assert np.array_equal(confusion_matrix(wide, target), old_confusion(wide, target))
    assert np.array_equal(confusion_matrix(pred[:0], target[:0]), old_confusion(pred[:0], target[:0]))
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(pred, target[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", SHAPES)
def test_argmax_matches_the_boolean_loop_and_numpy_with_ties(dtype, channels, shape):
    rng = np.random.default_rng(channels * 31 + shape[1])
    x = rng.integers(-2, 3, shape + (channels,)).astype(dtype)  # few values: many ties
    got = argmax_last(x)
    assert got.dtype == np.uint8
    assert np.array_equal(got, old_argmax(x))
    assert np.array_equal(got, np.argmax(x, axis=-1))
    strided = np.concatenate([x, x], axis=1)[:, ::2]  # not contiguous
    assert np.array_equal(argmax_last(strided), old_argmax(strided))


def test_argmax_with_nan_and_infinity_matches_the_boolean_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((11, 13, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.1] = np.inf
    x[rng.random(x.shape) < 0.1] = -np.inf
    assert np.array_equal(argmax_last(x), old_argmax(x))


def boxes_and_labels(rng, n, size, n_classes):
    shapes = [(int(rng.integers(1, 3 * size)), int(rng.integers(1, 3 * size))) for _ in range(n)]
    shapes[0] = (size // 2 + 1, size)  # one needing no resize back in width
    boxes = [Letterbox.fit(h, w, size) for h, w in shapes]
    labels = [rng.integers(0, n_classes, s, dtype=np.uint8) for s in shapes]
    labels[1][0, :] = 255
    return boxes, labels


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_scoring_matches_the_per_image_loop(layout, two_threads):
    rng = np.random.default_rng(2)
    size, n_classes = 21, 3
    boxes, labels = boxes_and_labels(rng, 7, size, n_classes)
    # quantised logits: ties before and after the bilinear resize
    logits = torch.from_numpy(rng.integers(-3, 4, (7, n_classes, size, size)).astype(np.float32) / 4)
    logits = logits.contiguous(memory_format=layout)
    expected = [old_confusion(old_argmax(lb.invert(s)), t, n_classes)
                for s, lb, t in zip(logits.permute(0, 2, 3, 1).numpy(), boxes, labels)]
    got = score(logits, boxes, labels, n_classes)
    assert len(got) == len(expected) and all(np.array_equal(g, e) for g, e in zip(got, expected))
    restored = restore(logits, boxes)
    assert all(np.array_equal(r, old_argmax(lb.invert(s))) for r, s, lb in
               zip(restored, logits.permute(0, 2, 3, 1).numpy(), boxes))


def test_letterbox_batch_matches_the_stacked_copy_and_is_channels_last(two_threads):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(5, 9), (40, 13), (17, 17), (3, 60)]]
    labels = [rng.integers(0, 3, im.shape[:2], dtype=np.uint8) for im in images]
    batch, boxes, points = letterbox_batch(images, 16, labels)
    old = np.stack([lb.apply(im) for lb, im in zip(boxes, images)]).transpose(0, 3, 1, 2)
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.uint8
    assert torch.equal(batch, torch.from_numpy(np.ascontiguousarray(old)))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    clicks = [eval_click(lb.apply(lab, label=True)) for lb, lab in zip(boxes, labels)]
    assert points.tolist() == [list(c) for c in clicks]
    assert np.array_equal(letterbox_clicks(labels, 16), np.array(clicks))
    moves = np.array([[3, -2], [0, 0], [-40, 7], [1, 1]])
    given = letterbox_batch(images, 16, labels, moves, clicks=np.array(clicks))[2]
    assert torch.equal(given, letterbox_batch(images, 16, labels, moves)[2])


def test_normalise_gives_the_same_values_in_either_layout():
    x = torch.randint(0, 256, (3, 9, 7, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert torch.equal(normalise(x, mean, std), normalise(x.contiguous(), mean, std))


def test_in_parallel_keeps_order_runs_nested_calls_inline_and_raises(two_threads):
    assert runtime.in_parallel(lambda lo, hi: list(range(lo, hi)), 11) == list(range(11))
    assert runtime.in_parallel(lambda lo, hi: list(range(lo, hi)), 0) == []
    nested = runtime.in_parallel(lambda lo, hi: [runtime.in_parallel(lambda a, b: [(a, b)], 5)], 2)
    assert nested == [[(0, 5)], [(0, 5)]]

    def fail(lo, hi):
        if lo > 0:
            raise KeyError("second part")
        return [lo]

    with pytest.raises(KeyError, match="second part"):
        runtime.in_parallel(fail, 4)


@pytest.mark.parametrize("amount", [0.02, 0.5, 1.0])
def test_salt_and_pepper_matches_the_boolean_assignments(amount):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(1, 1), (7, 5), (31, 44)]]
    lut = _seed_round_trip_lut()
    expected = []
    for img, r in zip(images, [np.random.default_rng(i) for i in range(3)]):
        flipped = np.ones(img.shape, bool) if amount == 1 else r.random(img.shape) <= amount
        salted = r.random(img.shape) <= 0.5
        noisy = lut[img]
        noisy[flipped & salted] = 255
        noisy[flipped & ~salted] = 0
        expected.append(noisy)
    got = salt_and_pepper(images, amount, [np.random.default_rng(i) for i in range(3)])
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_opencv_split_is_the_plane_copy():
    x = np.random.default_rng(5).standard_normal((6, 5, 3)).astype(np.float32)
    assert all(np.array_equal(p, x[..., c]) for c, p in enumerate(cv2.split(x)))


def _randomise_bn(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics and affine far from 0/1: folding must carry them
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@torch.no_grad()
def test_efficientnet_batchnorms_fold_into_their_convolutions_with_the_same_output():
    from petseg_bench.bn_fold import fold_batchnorm
    from petseg_bench_models.efficientnet import EfficientNetLite

    net = EfficientNetLite("lite0")
    _randomise_bn(net)
    net.eval()
    encoder, head = net.encoder().eval(), net.head().eval()
    x = torch.rand(2, 3, 67, 53)  # odd sizes: the stride-2 SAME padding is uneven
    maps, pooled, logits = encoder(x), head(net.features(x)[-1]), net(x)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert fold_batchnorm(net) == n_bn  # stem, every block's two or three, head
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for a, b in zip(maps, net.features(x)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert torch.allclose(logits, net(x), rtol=1e-4, atol=1e-4)
    # the encoder and head made before the fold share the blocks, and fold their own stem/head pair
    assert fold_batchnorm(encoder) == 1 and fold_batchnorm(head) == 1
    assert torch.allclose(pooled, head(encoder(x)[-1]), rtol=1e-4, atol=1e-4)


def test_a_frozen_efficientnet_backbone_is_built_folded():
    from petseg_bench.backbones import clear_cache, load_backbone

    clear_cache()
    try:
        backbone = load_backbone("efficientnet:lite0:none")
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
        assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    finally:
        clear_cache()


@pytest.mark.parametrize("flags, unit", [
    (["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"], "AMX (amx_bf16)"),
    (["avx2", "avx512f", "avx512_bf16"], "AVX-512 BF16 (avx512_bf16), no AMX"),
    (["bf16"], "Arm bf16 extension"),
    (["avx2"], "no native bf16 (emulated)"),
])
def test_benchmarks_name_what_multiplies_bf16(flags, unit):
    from petseg_bench.provenance import bf16_matmul_units

    assert bf16_matmul_units({"cpu_flags": flags}) == unit
