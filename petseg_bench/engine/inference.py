"""Batches of images -> per-image confusion matrices, for one or many models at once.

The one inference path (as detectron2's ``inference_on_dataset``): training validation,
``evaluate`` and every sweep cell go through :func:`inference_on_dataset`. A batch is
letterboxed once per input size and shared by the models of that size; the backbone
features of a batch are computed once per backbone (:class:`FeatureCache`); logits are
restored to the original resolution and scored per image.

Where that per-image work runs depends on the device (``Runtime.overlaps_host_work``):
beside a GPU's forward it runs on helper threads (the next batch prepared, the last one
scored, while the GPU computes); on the CPU it runs between forwards, each batch's
images split over the forward's own threads (:func:`~.runtime.in_parallel`), since a
helper thread beside a CPU forward only takes cores and the GIL from it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch

from ..backbones import FeatureCache
from ..data.letterbox import Letterbox
from ..metrics import confusion_matrix
from .predictor import Predictor, letterbox_batch, restore

T = TypeVar("T")


@dataclass
class Batch:
    """Images of one batch letterboxed per input size, with their ground truth."""

    labels: list[np.ndarray]
    #: input size -> (uint8 [B, 3, S, S], geometries, clicks [B, 2] or None)
    boxed: dict[int, tuple[torch.Tensor, list[Letterbox], torch.Tensor | None]]
    #: the images' ids (an attack seeds its generators by them)
    ids: list[str] | None = None


def make_batch(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], sizes: Iterable[int],
               clicks: bool, moves: np.ndarray | None = None,
               placed: Mapping[int, np.ndarray] | None = None, ids: Sequence[str] | None = None) -> Batch:
    """Letterbox ``images`` once per size (and place the evaluation clicks when asked,
    moved by ``moves``, displacements in original pixels: see :func:`letterbox_batch`;
    ``placed``: per size the unmoved clicks when already known)."""
    labels = list(labels)
    return Batch(labels, {s: letterbox_batch(images, s, labels if clicks else None, moves,
                                             None if placed is None else placed.get(s))
                          for s in sorted(set(sizes))}, None if ids is None else list(ids))


def prefetch(make: Callable[[T], Batch], items: Sequence[T], background: bool = True) -> Iterator[Batch]:
    """``make(item)`` for each item: with ``background``, the next one prepared on a
    background thread while the caller works on the current one; else each when asked."""
    if not items:
        return
    if not background:
        for item in items:
            yield make(item)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(make, items[0])
        for nxt in list(items[1:]) + [None]:
            batch = pending.result()
            if nxt is not None:
                pending = pool.submit(make, nxt)
            yield batch


def score(logits: torch.Tensor, boxes: Sequence[Letterbox], labels: Sequence[np.ndarray], n_classes: int) -> list:
    """Per-image confusion matrices of logits restored to each image's original size
    (:func:`~.predictor.restore`'s resize and argmax, then the counts), images in parallel."""
    return restore(logits, boxes, lambda i, mask: confusion_matrix(mask, labels[i], n_classes))


def overlaps(predictors: Mapping[str, Predictor]) -> bool:
    """Whether the per-image work of these predictors runs beside their forward."""
    return any(pr.runtime.overlaps_host_work for pr in predictors.values())


def inference_on_dataset(predictors: Mapping[str, Predictor], batches: Iterable[Batch],
                         on_batch: Callable[[int], None] | None = None, attack: Callable | None = None
                         ) -> dict[str, np.ndarray]:
    """Per-image confusion matrices ``[N, C, C]`` of every predictor over ``batches``.
    ``attack(model, predictor, images, boxes, points, labels, ids) -> logits``, if given,
    replaces each predictor's forward (an attack computed per model, :mod:`.attack`)."""
    scored: dict[str, list] = {name: [] for name in predictors}  # per batch: its matrices, or their future
    overlap = overlaps(predictors)
    with ThreadPoolExecutor(1) as post:
        for batch in batches:
            cache = FeatureCache()  # one backbone pass per batch, shared by the models on it
            for name, pr in predictors.items():
                images, boxes, points = batch.boxed[pr.config.in_size]
                pts = points if pr.needs_clicks else None
                logits = pr.logits(images, pts, cache) if attack is None else \
                    attack(name, pr, images, boxes, pts, batch.labels, batch.ids)
                args = (logits, boxes, batch.labels, pr.config.n_classes)
                scored[name].append(post.submit(score, *args) if overlap else score(*args))
                if on_batch is not None:
                    on_batch(len(batch.labels))
        out = {}
        for name, pr in predictors.items():
            mats = [cm for s in scored[name] for cm in (s.result() if isinstance(s, Future) else s)]
            c = pr.config.n_classes
            out[name] = np.stack(mats) if mats else np.zeros((0, c, c), np.int64)
        return out


def clean_batches(split, positions: Sequence[int], predictors: Mapping[str, Predictor],
                  batch_size: int) -> Iterator[Batch]:
    """Unperturbed batches of a prepared split, letterboxed for ``predictors``."""
    sizes = {pr.config.in_size for pr in predictors.values()}
    clicks = any(pr.needs_clicks for pr in predictors.values())
    starts = list(range(0, len(positions), batch_size))

    def make(start: int) -> Batch:
        chunk = [int(p) for p in positions[start:start + batch_size]]
        return make_batch([split.image(p) for p in chunk], [split.label(p) for p in chunk], sizes, clicks)

    return prefetch(make, starts, overlaps(predictors))
