"""The ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) as perturbations.

Optional plugin pack: ``pip install 'petseg-bench[imagenet-c]'``. It registers through the
``petseg_bench`` entry-point group like any third-party plugin, one
:class:`~petseg_bench.specs.PerturbationSpec` per corruption, named
``imagenet_c_<corruption>``, param ``severity``, levels 0 (clean) to 5:

* the 15 standard corruptions, noise: ``gaussian_noise``, ``shot_noise``,
  ``impulse_noise``; blur: ``defocus_blur``, ``glass_blur``, ``motion_blur``,
  ``zoom_blur``; weather: ``snow``, ``frost``, ``fog``; digital: ``brightness``,
  ``contrast``, ``elastic_transform``, ``pixelate``, ``jpeg_compression``;
* the 4 extra (held-out) ones: ``speckle_noise``, ``gaussian_blur``, ``spatter``,
  ``saturate``. They are not part of the standard 15: ImageNet-C's mCE averages those
  only.

The 15 declare the family ``imagenet-c`` and the 4 extra ones the family
``imagenet-c-extra`` (``PerturbationSpec.family``), so the report computes ImageNet-C's
mCE and relative mCE over the 15 alone and gives the extra ones their own figures, and a
run that also sweeps other perturbations (the seed's eight) never blends them into one
mCE.

The library
-----------
The pixels come from ``imagecorruptions-imaug`` (import name ``imagecorruptions``), the
maintained fork of bethgelab's ``imagecorruptions``, which ports ImageNet-C's functions
to images of any size with the published parameter tables. It is used because it is
the faithful one that works here: the original ``imagecorruptions`` 1.1.2 breaks on
numpy 2 (``np.float_`` in fog), on scikit-image >= 0.19 (``multichannel=``) and on
setuptools without ``pkg_resources``; ``corrupt-tta`` changes the corruptions
themselves (another spatter, a different elastic transform and motion blur kernel,
BOX upsampling in pixelate). Motion blur in ImageNet-C needs ImageMagick (Wand); this
library replaces it with its own numpy shift-and-add kernel with the same (radius,
sigma, angle) parameters, so no system library is needed. Frost's six textures ship
inside the library's wheel (``imagecorruptions/frost/*``).

Cost (``benchmarks/imagenet_c_cost.py``, figures in ``benchmarks/README.md``): at the
data's resolution most corruptions cost 1-12x the seed's ``gaussian_noise`` per image.
Zoom blur is the slow one (30-50x: 11-16 zoomed copies of the whole image, about 90 ms
per 256-px image and 350 ms at 512 px on 2 cores); saturate and brightness (HSV round
trips, 8-12x) and glass blur (6-7x, and its numba pixel shuffle compiles on the first
call in a process, 4-13 s once) follow. Leave zoom blur out with
``--perturbations 'imagenet_c_[!z]*'`` if that matters.

Randomness: every draw comes from the image's generator
--------------------------------------------------------
The library draws from numpy's *global* generator (``np.random.normal``, ``poisson``,
``uniform``, ``randint``), from a seed argument (glass blur's numba loop, impulse
noise's scikit-image ``random_noise``), or, with no seed, from fresh OS entropy. Results
would then depend on call order, batch and thread. So this module never calls the
library's functions as they are. It makes copies of the library module's Python
functions (same code objects, same defaults) whose globals are a copy of the module's,
with one difference: the name ``np`` there is a view of numpy whose ``random``
attribute forwards each call to the ``numpy.random.RandomState`` *of the calling
thread* (a ``threading.local``). For each image, that RandomState is built on the
image's own generator's bit generator (``RandomState(rng.bit_generator)``), so every
legacy ``np.random.*`` draw the library makes consumes that image's generator and
nothing else. Glass blur gets ``seed=rng.integers(2**32)`` for its numba loop (numba
keeps its own generator per thread, and the loop holds the GIL from seeding to the last
draw); impulse noise gets the image's generator itself as scikit-image's ``rng``.

Why this is safe with threads (the sweep perturbs in a background thread): nothing
global is swapped or touched. The library module, numpy's global RandomState and the
numba dispatcher are left as they are; the active RandomState lives in a thread-local,
so two threads corrupting at once each see only their own image's generator, with no
lock. A draw made with no active generator raises instead of falling back to the
global one. Tests check that the output does not depend on batch order or
composition, on ``np.random.seed``, or on a second thread running at the same time,
and that numpy's global state is left unchanged.

Outputs follow the library's own ``corrupt()``: its float result in 0..255 is truncated
to uint8 (``np.uint8``), and the input image is never modified.

Without the library
-------------------
The module imports without it (the library is imported on first use only, which also
keeps ``petseg-bench list`` fast). The hook then returns the 19 specs marked
``unavailable`` with the one line of :func:`missing_extra` (which extra to install):
``list`` shows them as unavailable, ``--perturbations all`` and wildcards such as
``'*blur'`` leave them out without a warning, and asking for ``imagenet_c_*`` or one of
them by name stops with that line. Calling a spec's ``apply`` without the library
raises that line too.

Small images
------------
Every corruption works on non-square images and on images as small as 16 x 16 pixels
(the library's own ``corrupt()`` refuses anything under 32 px; its functions are called
directly here). Two edge cases of the library are handled: spatter divides by the
maximum of an empty liquid layer on small images (NaN, i.e. no spatter: the clean
pixels are kept where that happens), and pixelate needs at least one block a side,
which fails below 2 to 4 pixels a side depending on severity: that raises one line
naming the perturbation, the severity and the image size. Any other failure of the
library is re-raised as one line naming the perturbation, severity, image index in the
batch and its size.
"""

from __future__ import annotations

import dataclasses

import functools
import importlib.metadata
import math
import threading
import types
from typing import Any, Sequence

from petseg_bench import hookimpl
from petseg_bench.specs import PerturbationSpec

#: The distribution that provides the ``imagecorruptions`` import, and its tested range.
LIBRARY = "imagecorruptions-imaug"
LIBRARY_VERSIONS = ">=1.1.5,<1.2"
EXTRA = "imagenet-c"
INSTALL_HINT = f"install with pip install 'petseg-bench[{EXTRA}]'"

PREFIX = "imagenet_c_"
SEVERITIES = (0, 1, 2, 3, 4, 5)

#: The 15 standard corruptions, in ImageNet-C's order, with their group and the
#: published parameter per severity 1..5 (shown by ``petseg-bench list``).
COMMON: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: The 4 extra (held-out) corruptions.
EXTRAS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = COMMON + EXTRAS

#: ``PerturbationSpec.family`` of the 15 and of the 4 extra ones (scored apart).
FAMILY, FAMILY_LABEL = "imagenet-c", "ImageNet-C"
EXTRA_FAMILY, EXTRA_FAMILY_LABEL = "imagenet-c-extra", "ImageNet-C extra (held out)"

#: Cost notes from benchmarks/imagenet_c_cost.py (the data's 256-px images, 2 cores), shown
#: in the description. Most corruptions cost 1-12x the seed's gaussian_noise per image.
SLOW = {
    "zoom_blur": "slow: 11-16 zoomed copies, 30-50x the cost of gaussian_noise, about 0.09 s per 256-px "
                 "image; leave out with --perturbations 'imagenet_c_[!z]*'",
    "glass_blur": "6-7x gaussian_noise; its numba pixel shuffle compiles on first use in a process, 4-13 s once",
}

DESCRIPTIONS = {
    "gaussian_noise": "noise: x + N(0, s), s = 0.08, 0.12, 0.18, 0.26, 0.38 (image in 0..1)",
    "shot_noise": "noise: Poisson(x * c) / c, c = 60, 25, 12, 5, 3",
    "impulse_noise": "noise: salt and pepper, amount 0.03, 0.06, 0.09, 0.17, 0.27",
    "defocus_blur": "blur: anti-aliased disk kernel, radius 3, 4, 6, 8, 10",
    "glass_blur": "blur: Gaussian blur, local pixel shuffle, Gaussian blur; (sigma, max shift, "
                  "iterations) (0.7,1,2) (0.9,2,1) (1,2,3) (1.1,3,2) (1.5,4,2)",
    "motion_blur": "blur: linear motion blur at a random angle in [-45, 45] deg, (radius, sigma) "
                   "(10,3) (15,5) (15,8) (15,12) (20,15)",
    "zoom_blur": "blur: mean of the image and centre zooms 1 to 1.11, 1.15, 1.20, 1.24, 1.30",
    "snow": "weather: falling-snow layer (motion-blurred thresholded noise) over a greyed image",
    "frost": "weather: a random crop of one of 6 frost photographs blended in, "
             "(image, frost) weights (1,0.4) (0.8,0.6) (0.7,0.7) (0.65,0.7) (0.6,0.75)",
    "fog": "weather: plasma-fractal fog, (strength, decay) (1.5,2) (2,2) (2.5,1.7) (2.5,1.5) (3,1.4)",
    "brightness": "digital: HSV value + 0.1, 0.2, 0.3, 0.4, 0.5",
    "contrast": "digital: (x - mean) * c + mean, c = 0.4, 0.3, 0.2, 0.1, 0.05",
    "elastic_transform": "digital: smoothed random displacement field, alpha 12.5, 16.25, 21.25, 25, 30",
    "pixelate": "digital: box-downscale to 0.6, 0.5, 0.4, 0.3, 0.25 then nearest upscale",
    "jpeg_compression": "digital: JPEG quality 25, 18, 15, 10, 7",
    "speckle_noise": "extra, noise: x + x * N(0, s), s = 0.15, 0.2, 0.35, 0.45, 0.6",
    "gaussian_blur": "extra, blur: Gaussian blur, sigma 1, 2, 3, 4, 6",
    "spatter": "extra, weather: water (severities 1-3) or mud (4-5) splashes",
    "saturate": "extra, digital: HSV saturation * 0.3, 0.1, 2, 5, 20 (+ 0, 0, 0, 0.1, 0.2)",
}

#: pixelate's downscale factor per severity 1..5 (a published constant; used for the
#: size check only, the pixels come from the library).
PIXELATE_FACTORS = (0.6, 0.5, 0.4, 0.3, 0.25)


class ImagenetCUnavailable(ImportError):
    """The corruption library is missing or unusable; the message is one line."""


def installed_version() -> str | None:
    """The installed version of :data:`LIBRARY`, or None. Reads metadata only (fast)."""
    try:
        return importlib.metadata.version(LIBRARY)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_extra() -> str | None:
    """None when the library is installed, else the one line to show a user."""
    if installed_version() is not None:
        return None
    return f"the ImageNet-C corruptions need the {LIBRARY} package: {INSTALL_HINT}"


# --- every library draw from the calling thread's image generator -------------------

_active = threading.local()


class _ThreadRandom:
    """Stands for ``numpy.random`` inside the copied library functions."""

    def __getattr__(self, name: str) -> Any:
        state = getattr(_active, "state", None)
        if state is None:
            raise RuntimeError(f"imagecorruptions called numpy.random.{name} outside an image's generator")
        return getattr(state, name)


class _NumpyView(types.ModuleType):
    """numpy, except that ``random`` is a :class:`_ThreadRandom`."""

    def __init__(self, numpy: types.ModuleType):
        super().__init__("numpy")
        self._numpy = numpy
        self.random = _ThreadRandom()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._numpy, name)


@functools.lru_cache(maxsize=1)
def _library() -> dict[str, Any]:
    """The library's corruption functions, rebound to draw from the active generator.

    Built once (``lru_cache`` is thread-safe enough here: two racing first calls build
    two equal tables and one wins). Raises :class:`ImagenetCUnavailable` with one line.
    """
    import numpy as np

    version = installed_version()
    if version is None:
        raise ImagenetCUnavailable(missing_extra())
    try:
        from imagecorruptions import corruptions as module
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. numba vs numpy) is one line
        raise ImagenetCUnavailable(f"{LIBRARY} {version} is installed but does not import "
                                   f"({type(exc).__name__}: {exc}); reinstall with pip install "
                                   f"'petseg-bench[{EXTRA}]'") from None
    namespace = dict(vars(module))
    namespace["np"] = _NumpyView(np)
    for key, value in list(namespace.items()):
        # Plain Python functions of the module only: the numba dispatcher keeps its own
        # globals and never reaches numpy's global generator (it is seeded explicitly).
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            copy = types.FunctionType(value.__code__, namespace, value.__name__, value.__defaults__,
                                      value.__closure__)
            copy.__kwdefaults__ = value.__kwdefaults__
            copy.__qualname__ = value.__qualname__
            namespace[key] = copy
    missing = [name for name in ALL if not callable(namespace.get(name))]
    if missing:
        raise ImagenetCUnavailable(f"{LIBRARY} {version} lacks {', '.join(missing)}; "
                                   f"petseg-bench needs {LIBRARY}{LIBRARY_VERSIONS}")
    return {name: namespace[name] for name in ALL}


def corrupt_one(name: str, image, severity: int, rng, index: int = 0):
    """One image (uint8 HxWx3) corrupted by ``name`` at ``severity`` 1..5, every random
    draw taken from ``rng`` (a ``numpy.random.Generator``). Returns a new uint8 array."""
    import numpy as np
    from PIL import Image

    label = f"{PREFIX}{name} severity {severity}"
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{label}: image {index} is {got}; expected uint8 HxWx3")
    h, w = image.shape[:2]
    if name == "pixelate":
        factor = PIXELATE_FACTORS[severity - 1]
        if int(h * factor) < 1 or int(w * factor) < 1:
            need = math.ceil(1 / factor - 1e-9)
            raise ValueError(f"{label}: image {index} is {h}x{w} px, too small to pixelate "
                             f"(needs at least {need} px a side at this severity)")
    function = _library()[name]
    kwargs: dict[str, Any] = {}
    if name == "glass_blur":
        kwargs["seed"] = int(rng.integers(0, 2 ** 32))  # numba's own per-thread generator
    elif name == "impulse_noise":
        kwargs["seed"] = rng  # scikit-image's random_noise(rng=...)
    previous = getattr(_active, "state", None)
    _active.state = np.random.RandomState(rng.bit_generator)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = function(Image.fromarray(image), severity, **kwargs)
            out = np.asarray(raw)
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                # spatter on a small image: the liquid layer is empty, 0/0 -> no spatter there
                out = np.where(np.isfinite(out), out, image)
            out = np.uint8(out) if out.dtype != np.uint8 else np.array(out, copy=True)
    except ImagenetCUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - one line naming the corruption and the image
        message = " ".join(str(exc).split()) or "(no message)"
        raise ValueError(f"{label} failed on image {index} ({h}x{w} px): {type(exc).__name__}: {message}") from exc
    finally:
        _active.state = previous
    if out.shape != image.shape:
        raise ValueError(f"{label} returned {out.shape} for image {index} of shape {image.shape}")
    return out


def make_apply(name: str):
    """The ``apply(images, value, rngs)`` of corruption ``name``."""

    def apply(images: Sequence, value: float, rngs: Sequence) -> list:
        import numpy as np

        severity = int(round(float(value)))
        if severity not in SEVERITIES or severity != float(value):
            raise ValueError(f"{PREFIX}{name}: severity must be one of 0..5, got {value!r}")
        if severity == 0:
            return [np.array(img, copy=True) for img in images]
        if len(images) != len(rngs):
            raise ValueError(f"{PREFIX}{name}: {len(images)} images but {len(rngs)} generators")
        return [corrupt_one(name, img, severity, rng, i) for i, (img, rng) in enumerate(zip(images, rngs))]

    apply.__name__ = f"{PREFIX}{name}"
    apply.__qualname__ = apply.__name__
    return apply


def specs() -> list[PerturbationSpec]:
    """The 19 specs, whether or not the library is installed."""
    out = []
    for name in ALL:
        description = f"ImageNet-C {DESCRIPTIONS[name]}"
        if name in SLOW:
            description += f" ({SLOW[name]})"
        family = (FAMILY, FAMILY_LABEL) if name in COMMON else (EXTRA_FAMILY, EXTRA_FAMILY_LABEL)
        out.append(PerturbationSpec(name=f"{PREFIX}{name}", param="severity", levels=SEVERITIES,
                                    apply=make_apply(name), description=description,
                                    family=family[0], family_label=family[1]))
    return out


@hookimpl
def petseg_bench_perturbations():
    # Without the extra the specs are listed but unavailable: left out of `all` and
    # wildcards, and asking for one by name says which extra to install.
    missing = missing_extra()
    if missing is None:
        return specs()
    return [dataclasses.replace(s, unavailable=missing) for s in specs()]
