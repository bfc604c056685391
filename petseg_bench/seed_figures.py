"""The seed study's published figures, for side-by-side comparison tables.

Copied from the seed paper (SPEC.md "The seed's published figures"). They were obtained
on the full Oxford-IIIT Pet release with pretrained CLIP on a GPU: reports show them
beside this package's numbers, labelled as the paper's, and never mix the two.
A figure is a number, a ``(low, high)`` range where the paper gives one, or ``None``
where it gives none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

Figure = Union[float, tuple[float, float], None]

#: How reports label the paper's columns.
SEED_SOURCE = "seed paper (full dataset, pretrained CLIP, GPU)"

#: Display names of the built-in models (third-party models keep their own name).
MODEL_LABELS: Mapping[str, str] = {
    "unet": "U-Net",
    "autoencoder": "Autoencoder",
    "clip_only": "CLIP-only",
    "clip_unet": "CLIP+U-Net",
    "point_clip_unet": "PointCLIP+U-Net",
}


@dataclass(frozen=True)
class Table1Row:
    """Table 1 (test split): mean IoU, Dice and pixel accuracy."""

    label: str
    miou: Figure
    dice: Figure
    pixel_accuracy: Figure
    note: str = ""


@dataclass(frozen=True)
class Table2Row:
    """Table 2 (test split): per-class IoU."""

    background: float
    cat: float
    dog: float


#: Table 1, keyed by this package's model name ("" for rows with no model here).
TABLE1: Mapping[str, Table1Row] = {
    "unet": Table1Row("U-Net", 0.68, 0.75, 0.87),
    "autoencoder": Table1Row("Autoencoder", 0.56, 0.63, 0.74),
    "clip_only": Table1Row("CLIP-only", 0.58, 0.71, 0.80),
    "clip_unet": Table1Row("CLIP+U-Net", 0.72, 0.83, 0.88),
    "point_clip_unet": Table1Row("PointCLIP+U-Net", (0.70, 0.71), (0.81, 0.82), None, note="from the paper's text"),
}

#: Table 1's last row: the course's provided baseline (no model of this package).
TABLE1_PROVIDED_BASELINE = Table1Row("provided baseline", 0.33, None, None)

#: Table 2 (per-class IoU background / cat / dog); the point model has no row.
TABLE2: Mapping[str, Table2Row] = {
    "unet": Table2Row(0.84, 0.68, 0.52),
    "autoencoder": Table2Row(0.75, 0.67, 0.27),
    "clip_only": Table2Row(0.68, 0.69, 0.36),
    "clip_unet": Table2Row(0.82, 0.68, 0.66),
}

#: The paper's robustness findings (CLIP+U-Net, Dice), in words.
ROBUSTNESS_NOTE = ("CLIP+U-Net, Dice: clean 82.3%; most perturbations 80-82%; salt and pepper falls to 25% at "
                   "the top level; contrast decrease dips to about 55% and recovers to 82.6% at the strongest level.")


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def format_figure(value: Figure, digits: int = 2) -> str:
    """``0.68``, ``0.70–0.71`` for a range, ``—`` where the paper has no figure."""
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return f"{value[0]:.{digits}f}–{value[1]:.{digits}f}"
    return f"{value:.{digits}f}"
