"""Built-in photometric perturbations: contrast and brightness, up and down.

Each is a per-value map of the seed study's float formula (``pixel * factor`` or
``pixel + offset`` in float32, clipped to 0..255, truncated to uint8). Because the
output depends only on the input value, it is applied through a 256-entry lookup
table built with that same formula: bit-identical to the formula and much faster.
numpy and OpenCV are imported inside the functions so that listing plugins stays fast.
"""

from __future__ import annotations

from typing import Sequence

from petseg_bench import hookimpl
from petseg_bench.specs import PerturbationSpec

from . import SEED_FAMILY, SEED_FAMILY_LABEL

CONTRAST_INCREASE = (1.00, 1.01, 1.02, 1.03, 1.04, 1.05, 1.10, 1.15, 1.20, 1.25)
CONTRAST_DECREASE = (1.00, 0.95, 0.90, 0.85, 0.80, 0.60, 0.40, 0.30, 0.20, 0.10)
BRIGHTNESS_INCREASE = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45)
BRIGHTNESS_DECREASE = (0, -5, -10, -15, -20, -25, -30, -35, -40, -45)


def contrast_formula(img, factor: float):
    """The seed's reference formula (also used to build the lookup table)."""
    import numpy as np

    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def brightness_formula(img, offset: float):
    """The seed's reference formula (also used to build the lookup table)."""
    import numpy as np

    return np.clip(img.astype(np.float32) + offset, 0, 255).astype(np.uint8)


def _apply_lut(images: Sequence, lut) -> list:
    import cv2

    # cv2.LUT allocates a new array, so the inputs are never touched.
    return [cv2.LUT(img, lut) for img in images]


def _all_values():
    import numpy as np

    return np.arange(256, dtype=np.uint8)


def contrast(images: Sequence, value: float, rngs: Sequence) -> list:
    """Multiply every value by ``factor`` (deterministic: ``rngs`` is unused)."""
    import numpy as np

    if float(value) == 1.0:
        return [np.array(img, copy=True) for img in images]
    return _apply_lut(images, contrast_formula(_all_values(), float(value)))


def brightness(images: Sequence, value: float, rngs: Sequence) -> list:
    """Add ``offset`` (negative for darker) to every value (``rngs`` is unused)."""
    import numpy as np

    if float(value) == 0:
        return [np.array(img, copy=True) for img in images]
    return _apply_lut(images, brightness_formula(_all_values(), float(value)))


@hookimpl
def petseg_bench_perturbations():
    return [
        PerturbationSpec(
            name="contrast_increase",
            param="factor",
            levels=CONTRAST_INCREASE,
            apply=contrast,
            description="pixel * factor (> 1), clipped, truncated to uint8",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
        PerturbationSpec(
            name="contrast_decrease",
            param="factor",
            levels=CONTRAST_DECREASE,
            apply=contrast,
            description="pixel * factor (< 1), truncated to uint8",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
        PerturbationSpec(
            name="brightness_increase",
            param="offset",
            levels=BRIGHTNESS_INCREASE,
            apply=brightness,
            description="pixel + offset, clipped to 255",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
        PerturbationSpec(
            name="brightness_decrease",
            param="offset",
            levels=BRIGHTNESS_DECREASE,
            apply=brightness,
            description="pixel + offset (negative), clipped to 0",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
    ]
