"""Built-in noise perturbations: ``gaussian_noise`` and ``salt_and_pepper``.

Both draw their randomness from the generator of each image only, so an image gets
the same pixels whatever batch it is in and wherever it sits in that batch.
numpy is imported inside the functions so that listing plugins stays fast.
"""

from __future__ import annotations

from typing import Sequence

from petseg_bench import hookimpl
from petseg_bench.specs import PerturbationSpec

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


def salt_and_pepper(images: Sequence, value: float, rngs: Sequence) -> list:
    """Replace each value (each channel of each pixel) with probability ``amount``;
    a replaced value becomes 255 (salt) or 0 (pepper) with probability 0.5 each.

    This mirrors ``skimage.util.random_noise(mode='s&p', salt_vs_pepper=0.5)`` draw
    for draw (two ``rng.random`` arrays of the image's shape, ``<=`` comparisons), so
    for the same generator it gives the same pixels, without skimage's float64
    round trip.
    """
    import numpy as np

    amount = float(value)
    if amount == 0:
        return [np.array(img, copy=True) for img in images]
    out = []
    for img, rng in zip(images, rngs, strict=True):
        flipped = np.ones(img.shape, bool) if amount >= 1 else rng.random(img.shape) <= amount
        salted = rng.random(img.shape) <= 0.5
        noisy = np.array(img, copy=True)
        noisy[flipped & salted] = 255
        noisy[flipped & ~salted] = 0
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
        ),
        PerturbationSpec(
            name="salt_and_pepper",
            param="amount",
            levels=SALT_AND_PEPPER_AMOUNTS,
            apply=salt_and_pepper,
            description="each value set to 0 or 255 (equally likely) with probability amount",
        ),
    ]
