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

from .errors import PLUGIN_FAILURES, PluginError, failure_text
from .specs import PerturbationSpec


def image_rng(seed: int, perturbation: str, level: int, image_id: str) -> np.random.Generator:
    """The generator of one (run seed, perturbation, level, image)."""
    key = [seed, zlib.crc32(perturbation.encode()), level, zlib.crc32(image_id.encode())]
    return np.random.default_rng(np.random.SeedSequence(key))


def perturb(spec: PerturbationSpec, images: Sequence[np.ndarray], level: int, ids: Sequence[str],
            seed: int) -> list[np.ndarray]:
    """``images`` (uint8 HxWx3) at ``level`` of ``spec``; level 0 returns them unchanged.

    A plugin that raises (or calls sys.exit), or returns anything but one uint8 array of
    the same shape per image, gets one line naming the perturbation, the level and the image.
    """
    if level == 0:
        return list(images)
    value = spec.levels[level]
    rngs = [image_rng(seed, spec.name, level, i) for i in ids]
    try:
        out = spec.apply(images, value, rngs)
    except PLUGIN_FAILURES as exc:  # a plugin's failure becomes one line naming it
        where = failing_image(spec, images, level, ids, seed)
        raise PluginError(f"perturbation {spec.name} level {level} failed on {where}: {failure_text(exc)}") from None
    if not isinstance(out, (list, tuple)) or len(out) != len(images):
        raise PluginError(f"perturbation {spec.name} level {level} returned {type(out).__name__} "
                          f"of length {len(out) if hasattr(out, '__len__') else '?'}, expected {len(images)} images")
    for image_id, src, res in zip(ids, images, out):
        if not isinstance(res, np.ndarray) or res.dtype != np.uint8 or res.shape != src.shape:
            got = f"{res.dtype} {res.shape}" if isinstance(res, np.ndarray) else type(res).__name__
            raise PluginError(f"perturbation {spec.name} level {level} returned {got} for image {image_id}; "
                              f"expected uint8 {src.shape}")
    return list(out)


def failing_image(spec: PerturbationSpec, images: Sequence[np.ndarray], level: int, ids: Sequence[str],
                  seed: int) -> str:
    """Which image of a batch that failed makes ``spec`` fail on its own (each image is
    retried alone, with its own generator, until one fails): ``image ID (HxW px)``, or the
    batch when every image passes alone. Runs on the error path only."""
    for img, image_id in zip(images, ids):
        try:
            spec.apply([img], spec.levels[level], [image_rng(seed, spec.name, level, image_id)])
        except PLUGIN_FAILURES:  # this image is the one to name
            shape = getattr(img, "shape", ())
            size = f" ({shape[0]}x{shape[1]} px)" if len(shape) >= 2 else ""
            return f"image {image_id}{size}"
    return f"the batch of images {ids[0]}.. (each passes alone)" if ids else "an empty batch"


def perturb_clicks(spec: PerturbationSpec, labels: Sequence[np.ndarray], level: int, ids: Sequence[str],
                   seed: int, base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(clicks, moved clicks), both int ``[B, 2]`` (y, x) in original image pixels: the
    evaluation rule's click of each ground truth (``base``, if given) and where ``spec.apply_clicks`` moves it
    at ``level`` (unchanged at level 0 or for a pixel perturbation). Each image draws from
    its own generator (:func:`image_rng`), so a click never depends on order or batch.
    A plugin that raises or returns clicks of another shape, non-finite or outside the
    image gets one line naming the perturbation, the level and the image."""
    from .data.points import eval_click

    if base is None:  # the caller may pass them, computed once for many levels
        base = np.array([eval_click(lab) for lab in labels], dtype=np.int64).reshape(-1, 2)
    base = np.asarray(base, dtype=np.int64).reshape(-1, 2)
    if level == 0 or not spec.acts_on_clicks:
        return base, base.copy()
    value = spec.levels[level]
    rngs = [image_rng(seed, spec.name, level, i) for i in ids]
    try:
        out = np.asarray(spec.apply_clicks(base.copy(), list(labels), value, rngs), dtype=np.float64)
    except PLUGIN_FAILURES as exc:  # a plugin's failure becomes one line naming it
        raise PluginError(f"perturbation {spec.name} level {level} failed on the clicks of images {ids[0]}..: "
                          f"{failure_text(exc)}") from None
    if out.shape != base.shape or not np.isfinite(out).all():
        raise PluginError(f"perturbation {spec.name} level {level} returned clicks of shape {out.shape}"
                          f"{'' if np.isfinite(out).all() else ' with non-finite values'}; expected {base.shape}")
    moved = np.rint(out).astype(np.int64)
    for image_id, lab, (y, x) in zip(ids, labels, moved):
        if not (0 <= y < lab.shape[0] and 0 <= x < lab.shape[1]):
            raise PluginError(f"perturbation {spec.name} level {level} put the click of image {image_id} at "
                              f"({y}, {x}), outside the {lab.shape[0]}x{lab.shape[1]} image")
    return base, moved


def off_foreground(clicks: np.ndarray, labels: Sequence[np.ndarray]) -> np.ndarray:
    """Per image, whether its click (y, x) misses the ground-truth foreground (classes 1, 2)."""
    return np.array([lab[int(y), int(x)] not in (1, 2) for (y, x), lab in zip(clicks, labels)], dtype=bool)
