"""Built-in spatial perturbations: ``gaussian_blur`` and ``occlusion``.

Both work on each image at its original resolution. numpy and OpenCV are imported
inside the functions so that listing plugins stays fast.
"""

from __future__ import annotations

from typing import Sequence

from petseg_bench import hookimpl
from petseg_bench.specs import PerturbationSpec

from . import SEED_FAMILY, SEED_FAMILY_LABEL

BLUR_ITERATIONS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
OCCLUSION_SIDES = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45)


def blur_kernel():
    """The 3x3 binomial (Gaussian-like) kernel of the seed study, float32."""
    import numpy as np

    return np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16


def gaussian_blur(images: Sequence, value: float, rngs: Sequence) -> list:
    """Convolve ``iterations`` times with the 3x3 kernel (``rngs`` is unused).

    Exactly the seed's loop: ``cv2.filter2D(img, -1, kernel)`` per pass, so the
    result is rounded back to uint8 after every pass (not one wide blur), with
    OpenCV's default BORDER_REFLECT_101.
    """
    import cv2
    import numpy as np

    n = int(round(float(value)))
    kernel = blur_kernel()
    out = []
    for img in images:
        res = np.array(img, copy=True)  # filter2D returns new arrays; the copy covers n == 0
        for _ in range(n):
            res = cv2.filter2D(res, -1, kernel)
        out.append(res)
    return out


def occlusion(images: Sequence, value: float, rngs: Sequence) -> list:
    """Black out a ``side`` x ``side`` square (all channels 0) at a random position.

    The top-left corner is drawn from the image's generator, x first then y:
    ``x ~ U{0..W-side}``, ``y ~ U{0..H-side}`` (inclusive), so the square always
    lies inside the image. A side larger than the image's width or height blacks out
    the whole image (no draw is made then).
    """
    import numpy as np

    side = int(round(float(value)))
    out = []
    for img, rng in zip(images, rngs, strict=True):
        res = np.array(img, copy=True)
        if side > 0:
            h, w = img.shape[:2]
            if side > w or side > h:
                res[...] = 0
            else:
                x = int(rng.integers(0, w - side, endpoint=True))
                y = int(rng.integers(0, h - side, endpoint=True))
                res[y : y + side, x : x + side] = 0
        out.append(res)
    return out


@hookimpl
def petseg_bench_perturbations():
    return [
        PerturbationSpec(
            name="gaussian_blur",
            param="iterations",
            levels=BLUR_ITERATIONS,
            apply=gaussian_blur,
            description="repeated 3x3 [[1,2,1],[2,4,2],[1,2,1]]/16 convolution (cv2.filter2D)",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
        PerturbationSpec(
            name="occlusion",
            param="side",
            levels=OCCLUSION_SIDES,
            apply=occlusion,
            description="black side x side square at a uniformly random position",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
    ]
