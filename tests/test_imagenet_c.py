"""The ImageNet-C plugin pack (perturbations/imagenet_c.py, extra ``imagenet-c``).

Small synthetic images only. Tests that need the corruption library skip with a reason
where it is not installed; the behaviour without it is tested either way.
"""

from __future__ import annotations

import dataclasses

import importlib
import importlib.metadata
import threading
import time
import warnings

import numpy as np
import pytest

from petseg_bench.errors import PluginError
from petseg_bench.plugins import Registry

from petseg_bench_perturbations import imagenet_c

NEEDS_LIBRARY = pytest.mark.skipif(
    imagenet_c.installed_version() is None,
    reason=f"{imagenet_c.LIBRARY} is not installed ({imagenet_c.INSTALL_HINT})",
)

ALL = imagenet_c.ALL
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
SHAPES = [(40, 56, 3), (33, 47, 3)]


def synthetic(shape, seed: int = 0) -> np.ndarray:
    """A textured, mid-grey image: gradients, a bright square and mild noise."""
    h, w, _ = shape
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 100 * x / max(w - 1, 1), 60 + 100 * y / max(h - 1, 1),
                    np.full((h, w), 110.0)], axis=-1)
    img[h // 4: h // 2, w // 4: w // 2] += 60
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def gens(seeds) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


def spec_of(name):
    return {s.name: s for s in imagenet_c.specs()}[f"imagenet_c_{name}"]


def run(name, images, severity, seeds):
    return spec_of(name).apply(images, severity, gens(seeds))


def registry_with_retry(attempts: int = 6, wait_s: float = 10.0):
    """The real registry; retried while the core is transiently broken by a rewrite."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            plugins = importlib.import_module("petseg_bench.plugins")
            pm, problems = plugins.make_manager()
            return plugins.build_registry(pm, problems)
        except Exception as exc:  # noqa: BLE001
            last = exc
            time.sleep(wait_s)
    raise AssertionError(f"the plugin registry did not load: {last!r}")


# --- registration --------------------------------------------------------------------


@NEEDS_LIBRARY
def test_registered_through_the_entry_point():
    eps = [ep for ep in importlib.metadata.entry_points(group="petseg_bench") if ep.name == "imagenet_c"]
    assert [ep.value for ep in eps] == ["petseg_bench_perturbations.imagenet_c"]
    reg = registry_with_retry()
    ours = {n: s for n, s in reg.perturbations.items() if n.startswith("imagenet_c_")}
    assert sorted(ours) == sorted(f"imagenet_c_{n}" for n in ALL)
    assert len(ours) == 19 and len(imagenet_c.COMMON) == 15
    for name, spec in ours.items():
        assert reg.origins[("perturbation", name)] == "imagenet_c"
        assert spec.param == "severity" and tuple(spec.levels) == (0, 1, 2, 3, 4, 5)
        assert spec.description.startswith("ImageNet-C")
    assert not [p for p in reg.problems if "imagenet_c" in p]
    assert reg.select("perturbation", "imagenet_c_*blur") == [
        "imagenet_c_defocus_blur", "imagenet_c_gaussian_blur", "imagenet_c_glass_blur",
        "imagenet_c_motion_blur", "imagenet_c_zoom_blur"]


@NEEDS_LIBRARY
def test_frost_textures_ship_in_the_wheel():
    files = {str(f) for f in importlib.metadata.files(imagenet_c.LIBRARY) or []}
    textures = {f"imagecorruptions/frost/frost{i}.{'png' if i <= 3 else 'jpg'}" for i in range(1, 7)}
    assert textures <= files
    dist = importlib.metadata.distribution(imagenet_c.LIBRARY)
    for t in textures:
        assert dist.locate_file(t).is_file()


# --- without the library ----------------------------------------------------------------


def test_without_the_library(monkeypatch):
    monkeypatch.setattr(imagenet_c, "installed_version", lambda: None)
    imagenet_c._library.cache_clear()
    try:
        line = imagenet_c.missing_extra()
        assert "pip install 'petseg-bench[imagenet-c]'" in line and "\n" not in line
        offered = imagenet_c.petseg_bench_perturbations()  # listed, but marked unavailable
        assert len(offered) == len(ALL) and all(s.unavailable == line for s in offered)
        reg = Registry(perturbations={s.name: s for s in offered})
        reg.perturbations["gaussian_noise"] = dataclasses.replace(offered[0], name="gaussian_noise", unavailable=None)
        assert reg.select("perturbation", "all") == ["gaussian_noise"]  # `all` unchanged, no warning
        for pattern in ("imagenet_c*", "imagenet_c_fog"):
            with pytest.raises(PluginError, match=r"not available: .*petseg-bench\[imagenet-c\]"):
                reg.select("perturbation", pattern)
        img = synthetic((20, 20, 3))
        with pytest.raises(imagenet_c.ImagenetCUnavailable, match=r"petseg-bench\[imagenet-c\]"):
            spec_of("fog").apply([img], 1, gens([0]))
        assert spec_of("fog").apply([img], 0, gens([0]))[0].tolist() == img.tolist()  # clean needs nothing
    finally:
        imagenet_c._library.cache_clear()


# --- every corruption at every severity ---------------------------------------------------


@NEEDS_LIBRARY
@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_inputs_untouched(name):
    images = [synthetic(s, i) for i, s in enumerate(SHAPES)]
    before = [img.copy() for img in images]
    for severity in imagenet_c.SEVERITIES:
        out = run(name, images, severity, [1, 2])
        assert len(out) == len(images)
        for src, res in zip(images, out):
            assert isinstance(res, np.ndarray) and res.dtype == np.uint8 and res.shape == src.shape
            assert not np.shares_memory(src, res)
            if severity == 0:
                assert np.array_equal(res, src)
            if severity == 5:
                assert np.abs(res.astype(int) - src).mean() > 1.0, f"{name} at severity 5 barely changed the image"
    for img, orig in zip(images, before):
        assert np.array_equal(img, orig)


# --- determinism ---------------------------------------------------------------------------


@NEEDS_LIBRARY
@pytest.mark.parametrize("name", ALL)
def test_deterministic_in_any_batch_and_global_rng_state(name):
    a, b, c = synthetic((40, 56, 3), 0), synthetic((33, 47, 3), 1), synthetic((36, 36, 3), 2)
    np.random.seed(1)
    first = run(name, [a, b, c], 4, [10, 20, 30])
    np.random.seed(2)
    state = np.random.get_state()
    again = run(name, [a, b, c], 4, [10, 20, 30])
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:], \
        "the library drew from numpy's global generator"
    for x, y in zip(first, again):
        assert np.array_equal(x, y)
    np.random.seed(3)
    reordered = run(name, [c, a, b], 4, [30, 10, 20])
    assert all(np.array_equal(x, y) for x, y in zip(first, [reordered[1], reordered[2], reordered[0]]))
    alone = run(name, [b], 4, [20])[0]
    assert np.array_equal(alone, first[1])
    other_image_mates = run(name, [synthetic((50, 20, 3), 9), b], 4, [99, 20])[1]
    assert np.array_equal(other_image_mates, first[1])


RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur",
          "snow", "frost", "fog", "elastic_transform", "spatter")


@NEEDS_LIBRARY
@pytest.mark.parametrize("name", RANDOM)
def test_the_generator_decides_the_pixels(name):
    img = synthetic((48, 48, 3))
    outs = [run(name, [img], 5, [s])[0] for s in (1, 2, 3)]
    assert not (np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2]))


@NEEDS_LIBRARY
def test_two_threads_at_once_give_the_sequential_pixels():
    """Two threads corrupt concurrently while a third hammers numpy's global generator."""
    names = ("gaussian_noise", "fog", "snow", "glass_blur", "motion_blur", "frost", "impulse_noise",
             "elastic_transform")
    images = {0: synthetic((64, 80, 3), 0), 1: synthetic((72, 56, 3), 1)}
    expected = {(t, n): run(n, [images[t]], 3, [100 + t])[0] for t in images for n in names}
    rounds = 4
    barrier = threading.Barrier(3)
    stop = threading.Event()
    got: dict = {}
    errors: list = []

    def worker(t):
        try:
            barrier.wait()
            for r in range(rounds):
                for n in names:
                    got[(t, n, r)] = run(n, [images[t]], 3, [100 + t])[0]
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def global_rng_user():
        barrier.wait()
        while not stop.is_set():
            np.random.seed(int(np.random.randint(1000)))
            np.random.normal(size=1000)

    threads = [threading.Thread(target=worker, args=(t,)) for t in images]
    noise = threading.Thread(target=global_rng_user)
    for th in (*threads, noise):
        th.start()
    for th in threads:
        th.join(timeout=300)
    stop.set()
    noise.join(timeout=30)
    assert not errors, errors
    for (t, n, _r), res in got.items():
        assert np.array_equal(res, expected[(t, n)]), f"{n} in thread {t} differs from the sequential run"
    assert len(got) == 2 * rounds * len(names)


# --- severity ordering --------------------------------------------------------------------


@NEEDS_LIBRARY
@pytest.mark.parametrize("name", NOISE + ("contrast", "brightness", "defocus_blur", "gaussian_blur"))
def test_damage_grows_with_severity(name):
    images = [synthetic((48, 64, 3), i) for i in range(3)]
    diffs = []
    for severity in range(1, 6):
        out = run(name, images, severity, [5, 6, 7])
        diffs.append(np.mean([np.abs(o.astype(int) - i).mean() for o, i in zip(out, images)]))
    assert all(a < b for a, b in zip(diffs, diffs[1:])), f"{name}: mean |diff| by severity {diffs}"


# --- small, odd and bad input -----------------------------------------------------------------


@NEEDS_LIBRARY
@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 41, 3), (23, 16, 3)])
def test_tiny_and_non_square_images_are_handled(shape):
    img = synthetic(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN casts or other warnings leak out
        for name in ALL:
            for severity in range(1, 6):
                out = run(name, [img], severity, [severity])[0]
                assert out.dtype == np.uint8 and out.shape == shape, (name, severity)


@NEEDS_LIBRARY
def test_spatter_on_an_empty_liquid_layer_keeps_clean_pixels():
    """The library divides by the maximum of the liquid layer; on a tiny image the layer
    can be empty (0/0 = NaN everywhere): no spatter, the clean pixels come back."""
    img = synthetic((4, 4, 3))
    clean = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'invalid value' warnings, no NaN cast to uint8
        for seed in range(12):
            for severity in (1, 2, 3):
                out = run("spatter", [img], severity, [seed])[0]
                assert out.shape == img.shape and out.dtype == np.uint8
                clean += int(np.array_equal(out, img))
    assert clean >= 1, "no empty liquid layer among these seeds: the case is not exercised"


@NEEDS_LIBRARY
def test_too_small_to_pixelate_is_one_clear_line():
    with pytest.raises(ValueError) as info:
        run("pixelate", [synthetic((16, 16, 3)), synthetic((3, 2, 3))], 5, [0, 1])
    message = str(info.value)
    assert "imagenet_c_pixelate" in message and "3x2" in message and "image 1" in message
    assert "\n" not in message
    assert run("pixelate", [synthetic((4, 4, 3))], 5, [0])[0].shape == (4, 4, 3)


@NEEDS_LIBRARY
def test_bad_input_names_the_perturbation():
    with pytest.raises(ValueError, match=r"imagenet_c_fog severity 2: image 0 is float64"):
        run("fog", [np.zeros((20, 20, 3))], 2, [0])
    with pytest.raises(ValueError, match=r"imagenet_c_fog: severity must be one of 0..5"):
        run("fog", [synthetic((20, 20, 3))], 2.5, [0])
    with pytest.raises(ValueError, match=r"imagenet_c_fog: severity must be one of 0..5"):
        run("fog", [synthetic((20, 20, 3))], 6, [0])
