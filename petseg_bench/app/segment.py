"""The function behind the page: an upload, a model, a click and a perturbation -> masks.

:func:`segment` is pure (no Gradio): it runs the clean image and, when a perturbation
level is chosen, the perturbed one, through the one inference path (letterbox,
:meth:`Predictor.logits`, :func:`restore` to the upload's size) in one batch. Pixels are
perturbed with :func:`~petseg_bench.perturbation.perturb` (a generator per image, as in
the sweep, the image named by its content hash); a click perturbation moves the user's
click with :func:`~petseg_bench.perturbation.perturb_clicks`, the clean prediction
standing in for the ground truth it is placed on. Whatever the user must change (no
click yet, a click off the image, an unavailable perturbation) is an :class:`AppMessage`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.letterbox import Letterbox
from ..engine.predictor import Predictor, letterbox_batch, restore
from ..errors import PetsegError
from ..perturbation import perturb, perturb_clicks
from ..plugins import get_registry
from ..specs import PerturbationSpec
from . import render
from .uploads import Upload

Click = tuple[int, int]  # (y, x) in upload pixels


class AppMessage(PetsegError):
    """Something the user has to do differently, in one line."""


@dataclass(frozen=True)
class Request:
    upload: Upload
    click: Click | None = None
    perturbation: str | None = None
    level: int = 0
    seed: int = 0


@dataclass(frozen=True)
class View:
    """One prediction: the image the model saw, its mask (upload size), the click it got."""

    image: np.ndarray
    mask: np.ndarray
    click: Click | None

    def overlay(self) -> np.ndarray:
        return render.overlay(self.image, self.mask)


@dataclass(frozen=True)
class Result:
    clean: View
    perturbed: View  # the clean view itself at level 0
    n_classes: int
    notes: tuple[str, ...]  # what happened (a moved click, an unused click)
    warnings: tuple[str, ...]  # what the user may want to change (a click off the pet)
    seconds: float  # the forward passes and restoring, not the drawing

    def shares(self) -> tuple[np.ndarray, np.ndarray]:
        return render.shares(self.clean.mask, self.n_classes), render.shares(self.perturbed.mask, self.n_classes)


def segment(predictor: Predictor, request: Request) -> Result:
    """The clean prediction of ``request.upload`` and, for a perturbation level above 0,
    the perturbed one. Raises AppMessage when the request cannot be served as it is."""
    image = request.upload.image
    check_click(request.click, image.shape)
    clicks = predictor.needs_clicks
    if clicks and request.click is None:
        raise AppMessage("This model is point-prompted: click on the pet to place the point.")
    click = request.click if clicks else None
    spec = perturbation_spec(request.perturbation, request.level)
    notes = []
    t0 = time.perf_counter()
    if spec is None:  # level 0 is the clean image: both panels show it
        clean = View(image, forward(predictor, [image], [click])[0], click)
        perturbed = clean
    elif spec.acts_on_clicks:
        clean = View(image, forward(predictor, [image], [click])[0], click)
        perturbed, note = moved_click_view(predictor, spec, request, clean)
        notes.append(note)
    else:
        noisy = perturb(spec, [image], request.level, [request.upload.key], request.seed)[0]
        masks = forward(predictor, [image, noisy], [click, click])
        clean, perturbed = View(image, masks[0], click), View(noisy, masks[1], click)
    seconds = time.perf_counter() - t0
    warnings = ()
    if click is not None and clean.mask[click] == 0:
        warnings = ("The click is on what the model sees as background: click on the pet.",)
    if not clicks and request.click is not None:
        notes.append("This model takes no click; the click is not used.")
    return Result(clean, perturbed, predictor.config.n_classes, tuple(notes), warnings, seconds)


def moved_click_view(predictor: Predictor, spec: PerturbationSpec, request: Request, clean: View) -> tuple[View, str]:
    """The prediction with the click moved by a click perturbation (pixels as ``spec.apply``
    leaves them), and a line saying where the click went."""
    image, key = request.upload.image, request.upload.key
    pixels = perturb(spec, [image], request.level, [key], request.seed)[0]
    if clean.click is None:
        view = View(pixels, forward(predictor, [pixels], [None])[0], None)
        return view, f"{spec.name} moves the click of point-prompted models; this model takes none."
    base = np.array([clean.click], np.int64)
    _, moved = perturb_clicks(spec, [clean.mask], request.level, [key], request.seed, base=base)
    click = (int(moved[0, 0]), int(moved[0, 1]))
    view = View(pixels, forward(predictor, [pixels], [click])[0], click)
    return view, f"{spec.name} moved the click from (x={clean.click[1]}, y={clean.click[0]}) to (x={click[1]}, y={click[0]})."


def forward(predictor: Predictor, images: Sequence[np.ndarray], clicks: Sequence[Click | None]) -> list[np.ndarray]:
    """Masks at each image's own size: letterbox, the model, restore (as Predictor.predict,
    with the user's clicks in place of the evaluation rule's)."""
    batch, boxes, _ = letterbox_batch(images, predictor.config.in_size)
    points = None
    if predictor.needs_clicks:
        points = torch.tensor([to_letterbox(lb, c) for lb, c in zip(boxes, clicks)], dtype=torch.int64)
    return restore(predictor.logits(batch, points), boxes)


def to_letterbox(lb: Letterbox, click: Click | None) -> Click:
    """A click (y, x) in original pixels as the letterbox pixel it falls in."""
    if click is None:
        raise AppMessage("This model is point-prompted: click on the pet to place the point.")
    y = lb.top + min(lb.new_h - 1, int((click[0] + 0.5) * lb.new_h / lb.height))
    x = lb.left + min(lb.new_w - 1, int((click[1] + 0.5) * lb.new_w / lb.width))
    return y, x


def check_click(click: Click | None, shape: tuple[int, ...]) -> None:
    if click is None:
        return
    h, w = shape[:2]
    y, x = click
    if not (0 <= y < h and 0 <= x < w):
        raise AppMessage(f"The click (x={x}, y={y}) is outside the {w}x{h} image: click on the pet.")


def perturbation_spec(name: str | None, level: int) -> PerturbationSpec | None:
    """The perturbation to apply, or None for none (no name, or level 0)."""
    if not name or name == "none":
        return None
    spec = get_registry().get("perturbation", name)
    if spec.unavailable:
        raise AppMessage(f"Perturbation {name} is not available here: {spec.unavailable}")
    if not 0 <= level < len(spec.levels):
        raise AppMessage(f"Perturbation {name} has levels 0 to {len(spec.levels) - 1}, not {level}.")
    return None if level == 0 else spec


def describe_level(name: str | None, level: int) -> str:
    """``gaussian_noise level 3 (std 0.06)``, or ``clean`` for none."""
    if not name or name == "none" or level == 0:
        return "clean (level 0)"
    spec = get_registry().get("perturbation", name)
    return f"{name} level {level} ({spec.param} {spec.levels[min(level, len(spec.levels) - 1)]:g})"


def click_sigma(predictor: Predictor, shape: tuple[int, ...]) -> float:
    """The click heatmap's sigma in image pixels: a model's ``heatmap_sigma`` option (input
    pixels) where it declares one, else 1/24 of its input size, scaled by the letterbox."""
    in_size = predictor.config.in_size
    sigma = float(predictor.config.options.get("heatmap_sigma") or in_size / 24)
    return sigma * max(shape[:2]) / in_size
