"""What the page draws: the mask over the image, the click heatmap, the class legend."""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

from ..labels import CLASS_NAMES

#: Overlay colour and opacity per class: the background dimmed, the pets in colour.
COLOURS = ((0, 0, 0), (235, 40, 200), (30, 144, 255), (60, 200, 90), (255, 140, 0), (240, 220, 40))
ALPHAS = (0.45, 0.55, 0.55, 0.55, 0.55, 0.55)
#: The click marker and heatmap colour.
CLICK_RGB = (255, 30, 60)


def class_names(n_classes: int) -> tuple[str, ...]:
    names = tuple(CLASS_NAMES[:n_classes])
    return names + tuple(f"class {c}" for c in range(len(names), n_classes))


def colour(c: int) -> tuple[int, int, int]:
    return COLOURS[c % len(COLOURS)]


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` (uint8 HxWx3) with each class of ``mask`` (HxW) blended in its colour
    (integer arithmetic through per-class tables: a few ms for a 1024 px image)."""
    n = int(mask.max()) + 1
    alpha = np.array([round(256 * ALPHAS[c % len(ALPHAS)]) for c in range(n)], np.uint16)
    tint = np.array([colour(c) for c in range(n)], np.uint16) * alpha[:, None]
    a = alpha[mask][..., None]
    return ((image.astype(np.uint16) * (256 - a) + tint[mask] + 128) >> 8).astype(np.uint8)


def shares(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's share of the pixels of ``mask``."""
    counts = np.bincount(mask.ravel(), minlength=n_classes)[:n_classes]
    return counts / max(1, mask.size)


def heatmap(image: np.ndarray, click: tuple[int, int] | None, sigma: float) -> np.ndarray:
    """``image`` with the Gaussian heatmap of ``click`` (y, x; ``sigma`` in image pixels)
    the model receives, and a ring marking the click itself."""
    out = image.copy()
    h, w = image.shape[:2]
    if click is None or not (0 <= click[0] < h and 0 <= click[1] < w):
        return out
    y, x = click
    reach = int(3 * sigma) + 2
    y0, y1, x0, x1 = max(0, y - reach), min(h, y + reach + 1), max(0, x - reach), min(w, x + reach + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (yy - y) ** 2 + (xx - x) ** 2
    heat = np.exp(-d2 / (2.0 * sigma * sigma))[..., None] * 0.8
    patch = out[y0:y1, x0:x1].astype(np.float32)
    blend = patch * (1 - heat) + np.array(CLICK_RGB, np.float32) * heat  # a mean of two colours: within 0..255
    out[y0:y1, x0:x1] = (blend + 0.5).astype(np.uint8)
    radius = max(3.0, min(h, w) / 60)
    ring = np.abs(np.sqrt(d2) - radius) <= max(1.0, radius / 4)
    out[y0:y1, x0:x1][ring] = (255, 255, 255)
    return out


def legend_html(n_classes: int, clean: Sequence[float], perturbed: Sequence[float] | None,
                perturbed_title: str = "perturbed") -> str:
    """A table: per class its overlay colour, name and share of pixels (clean, perturbed)."""
    names = class_names(n_classes)
    head = "<th>class</th><th>clean</th>" + (f"<th>{html.escape(perturbed_title)}</th>" if perturbed is not None else "")
    rows = []
    for c in range(n_classes):
        swatch = (f'<span style="display:inline-block;width:1em;height:1em;margin-right:.4em;'
                  f'vertical-align:middle;border:1px solid #888;background:rgb{colour(c)}"></span>')
        cells = f'<td style="white-space:nowrap">{swatch}{html.escape(names[c])}</td><td>{100 * clean[c]:.1f}%</td>'
        if perturbed is not None:
            cells += f"<td>{100 * perturbed[c]:.1f}%</td>"
        rows.append(f'<tr data-class="{html.escape(names[c])}">{cells}</tr>')
    return (f'<table class="petseg-legend"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
            "<small>share of the image's pixels per predicted class; background dimmed</small>")
