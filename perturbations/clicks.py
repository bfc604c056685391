"""Built-in click perturbations: how much a point-prompted model's score rests on a perfect click.

Each acts on the evaluation click (y, x), given in original image pixels, instead of the
pixels (``target="clicks"``): the images stay clean. Every random draw comes from the
generator of each image only (seeded by run seed, perturbation, level and image id), so
an image gets the same click whatever batch it is in. Level 0 is always the evaluation
rule's click (the pet pixel deepest inside the mask). Models without a click input get
no cells for these (n/a in the report).

- ``click_jitter``: the click moved by ``radius`` px (original resolution) in a uniformly
  random direction; where that point is outside the image, the radius is shortened
  along the same direction until it is inside.
- ``click_random_fg``: a uniformly random pet pixel instead of the deepest one. Levels
  1..9 are nine independent draws (each level its own generator), so the curve's spread
  over levels shows how much the score depends on *where* on the pet the click lands,
  and their mean is the expected Dice under a uniformly placed click. The level value
  is the draw number; the curve is not expected to be monotone.
- ``click_centroid``: level 1 is the seed study's rule, the mask's centre of mass
  (rounded), which can fall off a curled-up pet: the sweep records per cell the share of
  images whose click misses the pet (``click_off_foreground`` in run.json). It has
  levels 0 and 1 only.
- ``click_wrong``: the click on background, at a distance of at least ``d`` px from the
  pet: a uniformly random background pixel among those at distance >= d (the farthest
  background pixel when none is that far; the image centre when the image has no
  background). Graded by d.
"""

from __future__ import annotations

from typing import Sequence

from petseg_bench import hookimpl
from petseg_bench.specs import PerturbationSpec

JITTER_RADII = (0, 2, 4, 8, 12, 16, 24, 32, 48, 64)
RANDOM_FG_DRAWS = tuple(range(10))
CENTROID_LEVELS = (0, 1)
WRONG_DISTANCES = (0, 1, 2, 4, 8, 16, 24, 32, 48, 64)


def _fg(label):
    return (label == 1) | (label == 2)


def _keep_pixels(images: Sequence, value: float, rngs: Sequence) -> list:
    """The images unchanged: these perturbations act on the click only."""
    return list(images)


def jitter(clicks, labels: Sequence, value: float, rngs: Sequence):
    """Each click moved ``value`` px in a random direction, kept inside its image."""
    import numpy as np

    out = np.asarray(clicks, dtype=np.float64).copy()
    radius = float(value)
    if radius == 0:
        return out
    for k, (lab, rng) in enumerate(zip(labels, rngs, strict=True)):
        h, w = lab.shape[:2]
        theta = rng.uniform(0.0, 2.0 * np.pi)
        dy, dx = np.sin(theta), np.cos(theta)
        y0, x0 = out[k]
        r = radius
        # Shorten along the same direction until the rounded point is inside the image.
        lim = [r]
        if dy > 1e-12:
            lim.append((h - 1 - y0) / dy)
        elif dy < -1e-12:
            lim.append(-y0 / dy)
        if dx > 1e-12:
            lim.append((w - 1 - x0) / dx)
        elif dx < -1e-12:
            lim.append(-x0 / dx)
        r = max(0.0, min(lim))
        y, x = np.rint(y0 + r * dy), np.rint(x0 + r * dx)
        out[k] = (min(max(y, 0), h - 1), min(max(x, 0), w - 1))
    return out


def random_fg(clicks, labels: Sequence, value: float, rngs: Sequence):
    """A uniformly random pet pixel per image (the click unchanged where there is no pet)."""
    import numpy as np

    out = np.asarray(clicks, dtype=np.float64).copy()
    for k, (lab, rng) in enumerate(zip(labels, rngs, strict=True)):
        ys, xs = np.nonzero(_fg(lab))
        if len(ys):
            j = int(rng.integers(len(ys)))
            out[k] = (ys[j], xs[j])
    return out


def centroid(clicks, labels: Sequence, value: float, rngs: Sequence):
    """The mask's centre of mass, rounded (the seed's rule); unchanged where there is no pet."""
    import numpy as np

    out = np.asarray(clicks, dtype=np.float64).copy()
    for k, lab in enumerate(labels):
        ys, xs = np.nonzero(_fg(lab))
        if len(ys):
            out[k] = (min(int(np.rint(ys.mean())), lab.shape[0] - 1), min(int(np.rint(xs.mean())), lab.shape[1] - 1))
    return out


def wrong(clicks, labels: Sequence, value: float, rngs: Sequence):
    """A random background pixel at least ``value`` px from the pet (the farthest one if
    none is that far; void counts as neither pet nor background and is never chosen)."""
    import numpy as np
    from scipy import ndimage

    out = np.asarray(clicks, dtype=np.float64).copy()
    d = float(value)
    for k, (lab, rng) in enumerate(zip(labels, rngs, strict=True)):
        fg = _fg(lab)
        bg = lab == 0
        if not bg.any():
            out[k] = (lab.shape[0] // 2, lab.shape[1] // 2)
            continue
        dist = ndimage.distance_transform_edt(~fg) if fg.any() else np.full(lab.shape, np.inf)
        ok = bg & (dist >= d)
        if not ok.any():
            far = np.where(bg, dist, -1.0)
            ok = far == far.max()
        ys, xs = np.nonzero(ok)
        j = int(rng.integers(len(ys)))
        out[k] = (ys[j], xs[j])
    return out


@hookimpl
def petseg_bench_perturbations():
    return [
        PerturbationSpec("click_jitter", "radius px", tuple(float(r) for r in JITTER_RADII), _keep_pixels,
                         "the click moved by a radius (px, original resolution) in a random direction, "
                         "kept inside the image", target="clicks", apply_clicks=jitter),
        PerturbationSpec("click_random_fg", "draw", tuple(float(v) for v in RANDOM_FG_DRAWS), _keep_pixels,
                         "a uniformly random pet pixel instead of the deepest one; levels 1-9 are nine "
                         "independent draws (their spread shows the dependence on click placement)",
                         target="clicks", apply_clicks=random_fg),
        PerturbationSpec("click_centroid", "seed rule", tuple(float(v) for v in CENTROID_LEVELS), _keep_pixels,
                         "the seed's click: the mask's centre of mass, which can fall off the pet "
                         "(share off the pet recorded per cell)", target="clicks", apply_clicks=centroid),
        PerturbationSpec("click_wrong", "min distance px", tuple(float(v) for v in WRONG_DISTANCES), _keep_pixels,
                         "the click on background at least a distance (px) from the pet",
                         target="clicks", apply_clicks=wrong),
    ]
