"""Built-in noise perturbations: ``gaussian_noise`` and ``salt_and_pepper``.

Both draw their randomness from the generator of each image only, so an image gets
the same pixels whatever batch it is in and wherever it sits in that batch.
numpy and OpenCV are imported inside the functions so that listing plugins stays fast.
"""

from __future__ import annotations

from typing import Sequence

from petseg_bench import hookimpl
from petseg_bench.specs import PerturbationSpec

from . import SEED_FAMILY, SEED_FAMILY_LABEL

GAUSSIAN_STDS = (0, 2, 4, 6, 8, 10, 12, 14, 16, 18)
SALT_AND_PEPPER_AMOUNTS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18)


def gaussian_noise(images: Sequence, value: float, rngs: Sequence) -> list:
    """Add N(0, std) noise per value, clip to 0..255 and truncate to uint8.

    Truncation (``astype(uint8)``, not rounding) is kept from the seed study so the
    numbers stay comparable; it biases the mean down by about 0.5 grey level.
    """
    import numpy as np

    std = float(value)
    if std == 0:
        return [np.array(img, copy=True) for img in images]
    out = []
    for img, rng in zip(images, rngs, strict=True):
        # float32 draws in place: about twice as fast as float64 normal() on a CPU.
        noisy = rng.standard_normal(img.shape, dtype=np.float32)
        noisy *= std
        noisy += img
        np.clip(noisy, 0, 255, out=noisy)
        out.append(noisy.astype(np.uint8))
    return out


def _seed_round_trip_lut():
    """What the seed's ``(random_noise(img) * 255).astype(uint8)`` makes of an untouched
    uint8 value: skimage's ``img_as_float`` (``v * (1 / 255)`` in float64), back times
    255, truncated. 24 of the 256 values (33, 37, ..., 244) come back one lower."""
    import numpy as np

    v = np.multiply(np.arange(256, dtype=np.uint8), 1.0 / 255, dtype=np.float64)
    return (v * 255).astype(np.uint8)


def salt_and_pepper(images: Sequence, value: float, rngs: Sequence) -> list:
    """Replace each value (each channel of each pixel) with probability ``amount``;
    a replaced value becomes 255 (salt) or 0 (pepper) with probability 0.5 each.

    Bit-identical to the seed's ``(random_noise(img, mode='s&p', amount=a) * 255)
    .astype(np.uint8)`` for the same generator: the draws mirror skimage's (two
    ``rng.random`` arrays of the image's shape, ``<=`` comparisons, none drawn for an
    amount of exactly 1), and untouched values go through the seed's float round trip
    and truncation (a lookup table), as gaussian_noise keeps its truncation. Level 0
    returns the image unchanged, as the seed does (it skips the call at amount 0).
    """
    import numpy as np

    amount = float(value)
    if amount == 0:
        return [np.array(img, copy=True) for img in images]
    import cv2

    lut = _seed_round_trip_lut()
    out = []
    for img, rng in zip(images, rngs, strict=True):
        flipped = np.ones(img.shape, bool) if amount == 1 else rng.random(img.shape) <= amount
        salted = rng.random(img.shape) <= 0.5
        # cv2.LUT and a masked copy: the same values as lut[img] and the two boolean-index
        # assignments (salt 255 where flipped & salted, pepper 0 where flipped & ~salted),
        # several times faster
        noisy = cv2.LUT(img, lut) if img.ndim == 3 and img.shape[2] <= 4 else lut[img]
        np.copyto(noisy, salted.view(np.uint8) * np.uint8(255), where=flipped)
        out.append(noisy)
    return out


@hookimpl
def petseg_bench_perturbations():
    return [
        PerturbationSpec(
            name="gaussian_noise",
            param="std",
            levels=GAUSSIAN_STDS,
            apply=gaussian_noise,
            description="additive Gaussian noise N(0, std) per value, clipped, truncated to uint8",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
        PerturbationSpec(
            name="salt_and_pepper",
            param="amount",
            levels=SALT_AND_PEPPER_AMOUNTS,
            apply=salt_and_pepper,
            description="each value set to 0 or 255 (equally likely) with probability amount; "
                        "untouched values truncated through the seed's float round trip (24 grey levels one lower)",
            family=SEED_FAMILY,
            family_label=SEED_FAMILY_LABEL,
        ),
    ]
