"""Clicks for point-prompted models, placed on a letterboxed ground-truth mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: How the evaluation click is placed; reported with every point-prompted result.
EVAL_CLICK_RULE = ("the foreground pixel deepest inside the pet (largest distance to the background) "
                   "in the letterboxed ground truth; first in raster order on ties")


def eval_click(label: np.ndarray) -> tuple[int, int]:
    """The deterministic evaluation click (y, x): see EVAL_CLICK_RULE.

    The seed used the centre of mass, which can fall off a curled-up pet; the
    distance-transform maximum always lies on the object.
    """
    fg = (label == 1) | (label == 2)
    if not fg.any():
        return label.shape[0] // 2, label.shape[1] // 2
    dist = ndimage.distance_transform_edt(np.pad(fg, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x)


def train_click(label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A training click drawn uniformly from the ground-truth foreground."""
    ys, xs = np.nonzero((label == 1) | (label == 2))
    if len(ys) == 0:
        return label.shape[0] // 2, label.shape[1] // 2
    k = int(rng.integers(len(ys)))
    return int(ys[k]), int(xs[k])
