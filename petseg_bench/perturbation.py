"""Applying a perturbation level to a batch: per-image generators and output checks.

Every random draw of a perturbation comes from a generator seeded by (run seed,
perturbation, level, image id), so a cell gives the same pixels in any order, batch,
worker or resume; the sweep, the report's example strips and the app all perturb through
:func:`perturb`.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from .errors import PluginError, one_line
from .specs import PerturbationSpec


def image_rng(seed: int, perturbation: str, level: int, image_id: str) -> np.random.Generator:
    """The generator of one (run seed, perturbation, level, image)."""
    key = [seed, zlib.crc32(perturbation.encode()), level, zlib.crc32(image_id.encode())]
    return np.random.default_rng(np.random.SeedSequence(key))


def perturb(spec: PerturbationSpec, images: Sequence[np.ndarray], level: int, ids: Sequence[str],
            seed: int) -> list[np.ndarray]:
    """``images`` (uint8 HxWx3) at ``level`` of ``spec``; level 0 returns them unchanged.

    A plugin that raises, or returns anything but one uint8 array of the same shape per
    image, gets one line naming the perturbation, the level and the image.
    """
    if level == 0:
        return list(images)
    value = spec.levels[level]
    rngs = [image_rng(seed, spec.name, level, i) for i in ids]
    try:
        out = spec.apply(images, value, rngs)
    except Exception as exc:  # noqa: BLE001 - a plugin's failure becomes one line naming it
        raise PluginError(f"perturbation {spec.name} level {level} failed on images {ids[0]}..: "
                          f"{type(exc).__name__}: {one_line(exc)}") from None
    if not isinstance(out, (list, tuple)) or len(out) != len(images):
        raise PluginError(f"perturbation {spec.name} level {level} returned {type(out).__name__} "
                          f"of length {len(out) if hasattr(out, '__len__') else '?'}, expected {len(images)} images")
    for image_id, src, res in zip(ids, images, out):
        if not isinstance(res, np.ndarray) or res.dtype != np.uint8 or res.shape != src.shape:
            got = f"{res.dtype} {res.shape}" if isinstance(res, np.ndarray) else type(res).__name__
            raise PluginError(f"perturbation {spec.name} level {level} returned {got} for image {image_id}; "
                              f"expected uint8 {src.shape}")
    return list(out)
