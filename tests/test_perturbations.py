"""The eight built-in perturbations, found through the real plugin registry.

Tiny synthetic images only; no dataset files.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from petseg_bench.plugins import get_registry

# The spec's table, written out literally: name -> (param, levels 0..9).
EXPECTED = {
    "gaussian_noise": ("std", (0, 2, 4, 6, 8, 10, 12, 14, 16, 18)),
    "salt_and_pepper": ("amount", (0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18)),
    "gaussian_blur": ("iterations", (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)),
    "occlusion": ("side", (0, 5, 10, 15, 20, 25, 30, 35, 40, 45)),
    "contrast_increase": ("factor", (1.00, 1.01, 1.02, 1.03, 1.04, 1.05, 1.10, 1.15, 1.20, 1.25)),
    "contrast_decrease": ("factor", (1.00, 0.95, 0.90, 0.85, 0.80, 0.60, 0.40, 0.30, 0.20, 0.10)),
    "brightness_increase": ("offset", (0, 5, 10, 15, 20, 25, 30, 35, 40, 45)),
    "brightness_decrease": ("offset", (0, -5, -10, -15, -20, -25, -30, -35, -40, -45)),
}
NAMES = sorted(EXPECTED)
SHAPES = [(17, 23, 3), (32, 32, 3), (40, 25, 3)]
SEEDS = [11, 22, 33]


@pytest.fixture(scope="module")
def perturbations():
    return get_registry().perturbations


def make_images(low: int = 0, high: int = 256, shapes=SHAPES, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=s, dtype=np.uint8) for s in shapes]


def rngs(seeds) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


def apply(spec, images, value, seeds=None):
    seeds = SEEDS[: len(images)] if seeds is None else seeds
    return spec.apply(images, value, rngs(seeds))


# --- every built-in perturbation -------------------------------------------------


def test_all_builtins_registered(perturbations):
    assert set(EXPECTED) <= set(perturbations)
    problems = [p for p in get_registry().problems if any(n in p for n in EXPECTED)]
    assert not problems


@pytest.mark.parametrize("name", NAMES)
def test_levels_match_table(perturbations, name):
    spec = perturbations[name]
    param, levels = EXPECTED[name]
    assert spec.param == param
    assert len(spec.levels) == 10
    assert list(spec.levels) == pytest.approx(list(levels), abs=1e-12)
    spec.validate()


@pytest.mark.parametrize("name", NAMES)
def test_level0_is_identity_copy(perturbations, name):
    spec = perturbations[name]
    images = make_images()
    out = apply(spec, images, spec.levels[0])
    assert len(out) == len(images)
    for img, res in zip(images, out):
        assert res.dtype == np.uint8
        np.testing.assert_array_equal(res, img)
        assert not np.shares_memory(res, img)


@pytest.mark.parametrize("name", NAMES)
def test_dtype_shape_inputs_untouched_deterministic(perturbations, name):
    spec = perturbations[name]
    images = make_images()
    originals = [img.copy() for img in images]
    for value in spec.levels:
        out = apply(spec, images, value)
        again = apply(spec, images, value)
        assert isinstance(out, list) and len(out) == len(images)
        for img, res, res2, orig in zip(images, out, again, originals):
            assert res.dtype == np.uint8
            assert res.shape == img.shape
            assert not np.shares_memory(res, img)
            np.testing.assert_array_equal(img, orig)  # input not modified
            np.testing.assert_array_equal(res, res2)  # deterministic for given generators
    # a value read back as float (e.g. from a results table) behaves the same
    top = spec.levels[-1]
    for a, b in zip(apply(spec, images, top), apply(spec, images, float(top))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_batch_order_and_size_invariance(perturbations, name):
    spec = perturbations[name]
    a, b, c = make_images(seed=5)
    sa, sb, sc = SEEDS
    for value in (spec.levels[3], spec.levels[-1]):
        abc = apply(spec, [a, b, c], value, [sa, sb, sc])
        ca = apply(spec, [c, a], value, [sc, sa])
        only_b = apply(spec, [b], value, [sb])
        np.testing.assert_array_equal(abc[0], ca[1])
        np.testing.assert_array_equal(abc[2], ca[0])
        np.testing.assert_array_equal(abc[1], only_b[0])
        # same-shape images in one batch still use their own generators
        twins = apply(spec, [a, a.copy()], value, [sa, sa])
        np.testing.assert_array_equal(twins[0], twins[1])
        np.testing.assert_array_equal(twins[0], abc[0])


# --- salt and pepper ------------------------------------------------------------


def test_salt_and_pepper_fraction(perturbations):
    spec = perturbations["salt_and_pepper"]
    # values in 1..254: a replaced value (0 or 255) is always a changed value, and the
    # float round trip never makes 0 or 255 of an untouched one
    img = make_images(1, 255, shapes=[(200, 200, 3)])[0]
    for amount in (0.02, 0.10, 0.18):
        (res,) = apply(spec, [img], amount, [7])
        changed = (res == 0) | (res == 255)
        assert changed.mean() == pytest.approx(amount, abs=0.005)
        salt = (res[changed] == 255).mean()
        assert salt == pytest.approx(0.5, abs=0.03)
        # per value, not per pixel: the channels of a pixel flip independently
        per_pixel = changed.any(axis=2).mean()
        assert per_pixel == pytest.approx(1 - (1 - amount) ** 3, abs=0.01)
        # untouched values are the input, or one lower (the seed's truncation)
        diff = img[~changed].astype(int) - res[~changed]
        assert set(np.unique(diff).tolist()) == {0, 1}


#: The 24 grey values that the seed's ``(img_as_float(v) * 255).astype(uint8)`` brings
#: back one lower (v / 255 * 255 lands just below v in float64).
TRUNCATED_VALUES = [33, 37, 41, 45, 49, 53, 57, 61, 66, 74, 82, 90, 98, 106, 114, 122,
                    132, 148, 164, 180, 196, 212, 228, 244]


def test_salt_and_pepper_keeps_the_seeds_truncation(perturbations):
    from skimage.util import img_as_float

    spec = perturbations["salt_and_pepper"]
    ramp = every_value_image()
    values = np.arange(256, dtype=np.uint8)
    seed_lut = (img_as_float(values) * 255).astype(np.uint8)
    assert np.flatnonzero(seed_lut != values).tolist() == TRUNCATED_VALUES
    (res,) = apply(spec, [ramp], 0.02, [3])
    untouched = (res != 0) & (res != 255)
    np.testing.assert_array_equal(res[untouched], seed_lut[ramp[untouched]])
    lowered = {int(v) for v in ramp[untouched & (res != ramp)]}
    assert lowered == set(TRUNCATED_VALUES)  # all 24, and only those
    # level 0 is the seed's short cut: the image itself, no round trip
    (clean,) = apply(spec, [ramp], 0, [3])
    np.testing.assert_array_equal(clean, ramp)


@pytest.mark.parametrize("amount", [0.02, 0.04, 0.10, 0.16, 0.18, 1.0])
def test_salt_and_pepper_is_bit_identical_to_the_seed_formula(perturbations, amount):
    """Our output == (random_noise(img, mode='s&p', amount=a, rng=<same draws>) * 255)
    .astype(np.uint8), the seed's robustness_test.py, for the same generator."""
    from skimage.util import random_noise

    spec = perturbations["salt_and_pepper"]
    images = make_images(shapes=[(200, 200, 3), (17, 23, 3)], seed=8) + [every_value_image()]
    seeds = [123, 7, 99]
    ours = apply(spec, images, amount, seeds)
    for img, seed, res in zip(images, seeds, ours):
        ref = random_noise(img, mode="s&p", amount=amount, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(res, (ref * 255).astype(np.uint8))


def test_salt_and_pepper_statistics_match_skimage(perturbations):
    from skimage.util import random_noise

    spec = perturbations["salt_and_pepper"]
    img = make_images(1, 255, shapes=[(200, 200, 3)])[0]
    for amount in (0.04, 0.16):
        (ours,) = apply(spec, [img], amount, [123])
        # statistics, with independent generators
        ref = random_noise(img, mode="s&p", amount=amount, salt_vs_pepper=0.5, rng=np.random.default_rng(456))
        ref = (ref * 255).astype(np.uint8)
        for v in (0, 255):
            assert (ours == v).mean() == pytest.approx((ref == v).mean(), abs=0.005)
        assert (ours != img).mean() == pytest.approx((ref != img).mean(), abs=0.005)


# --- occlusion ------------------------------------------------------------------


def test_occlusion_square(perturbations):
    spec = perturbations["occlusion"]
    images = make_images(1, 256, shapes=[(50, 60, 3), (45, 45, 3), (48, 70, 3)])
    for side in spec.levels[1:]:
        for seed in (0, 1, 2):
            out = apply(spec, images, side, [seed] * 3)
            for img, res in zip(images, out):
                zero = res == 0
                assert zero.sum() == side * side * 3  # side*side pixels, every channel
                mask = zero.all(axis=2)
                assert mask.sum() == side * side
                ys, xs = np.nonzero(mask)
                assert ys.max() - ys.min() + 1 == side and xs.max() - xs.min() + 1 == side
                assert ys.min() >= 0 and xs.min() >= 0
                assert ys.max() < img.shape[0] and xs.max() < img.shape[1]
                np.testing.assert_array_equal(res[~mask], img[~mask])  # nothing else changed


def test_occlusion_position_is_uniform_over_valid_range(perturbations):
    spec = perturbations["occlusion"]
    img = make_images(1, 256, shapes=[(12, 15, 3)])[0]
    side = 10
    corners = set()
    for seed in range(200):
        (res,) = apply(spec, [img], side, [seed])
        ys, xs = np.nonzero((res == 0).all(axis=2))
        corners.add((int(xs.min()), int(ys.min())))
    # x in 0..5, y in 0..2, both ends included
    assert {x for x, _ in corners} == set(range(6))
    assert {y for _, y in corners} == set(range(3))


def test_occlusion_larger_than_image_blacks_it_out(perturbations):
    spec = perturbations["occlusion"]
    images = make_images(1, 256, shapes=[(17, 23, 3), (30, 20, 3)])
    for res in apply(spec, images, 25):
        assert not res.any()
    (exact,) = apply(spec, [images[1]], 20)  # side == width: fits only at x = 0
    assert (exact == 0).all(axis=2).sum() == 400


# --- blur -----------------------------------------------------------------------


def test_blur_is_repeated_filter2d(perturbations):
    spec = perturbations["gaussian_blur"]
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16
    images = make_images()
    for n in spec.levels:
        out = apply(spec, images, n)
        for img, res in zip(images, out):
            ref = img
            for _ in range(int(n)):
                ref = cv2.filter2D(ref, -1, kernel)
            np.testing.assert_array_equal(res, ref)
            if n:
                assert res.std() < img.std()


# --- gaussian noise -------------------------------------------------------------


def test_gaussian_noise_std(perturbations):
    spec = perturbations["gaussian_noise"]
    img = np.full((200, 200, 3), 128, np.uint8)
    for std in spec.levels[1:]:
        (res,) = apply(spec, [img], std, [3])
        values = res.astype(np.float64)
        # truncation adds ~1/12 of variance and shifts the mean by ~-0.5
        assert values.std() == pytest.approx(np.sqrt(std**2 + 1 / 12), rel=0.03)
        assert values.mean() == pytest.approx(127.5, abs=0.2)


def test_gaussian_noise_uses_truncation(perturbations):
    spec = perturbations["gaussian_noise"]
    img = make_images(0, 256, shapes=[(20, 20, 3)])[0]
    (res,) = spec.apply([img], 8, [np.random.default_rng(9)])
    noise = np.random.default_rng(9).standard_normal(img.shape, dtype=np.float32) * np.float32(8)
    np.testing.assert_array_equal(res, np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8))


# --- contrast and brightness ----------------------------------------------------


def every_value_image() -> np.ndarray:
    """All 256 values in every channel, plus random ones, in a non-square image."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    ramp[..., 1] = ramp[..., 1][::-1]
    extra = make_images(shapes=[(16, 7, 3)])[0]
    return np.concatenate([ramp, extra], axis=1)


@pytest.mark.parametrize("name", ["contrast_increase", "contrast_decrease"])
def test_contrast_equals_float_formula(perturbations, name):
    spec = perturbations[name]
    images = [every_value_image(), *make_images()]
    for factor in spec.levels:
        for img, res in zip(images, apply(spec, images, factor)):
            ref = np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(res, ref)


@pytest.mark.parametrize("name", ["brightness_increase", "brightness_decrease"])
def test_brightness_equals_float_formula(perturbations, name):
    spec = perturbations[name]
    images = [every_value_image(), *make_images()]
    for offset in spec.levels:
        for img, res in zip(images, apply(spec, images, offset)):
            ref = np.clip(img.astype(np.float32) + offset, 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(res, ref)
    sign = 1 if name == "brightness_increase" else -1
    assert all(sign * v >= 0 for v in spec.levels)
