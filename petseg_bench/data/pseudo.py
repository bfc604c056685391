"""Pseudo-labelled images (``petseg-bench pseudo-label``) as extra training images.

The folder is in the seed's processed layout, which the ordinary readers take::

    TrainVal/color/<name>.jpg   the unlabelled photo, its bytes copied unchanged
    TrainVal/label/<name>.png   0 background, 1 cat, 2 dog, 255 void (not confident: ignored)
    pseudo-labels.json          the manifest: teacher, threshold, kept pixels per image and breed

Training adds them to its training part only (never to validation, never to test): it
prepares them with void pixels kept as "ignore" whatever ``--void`` says, since a void
pixel here means "the teacher was not sure", which must not be filled from a neighbour.
A pseudo-labelled name of the labelled data (either split) is refused: it could be a
validation or test image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, one_line
from .cache import PreparedSplit, prepare
from .layout import list_split, split_names
from .unlabelled import test_names

#: The manifest's file name, inside the pseudo-label folder.
MANIFEST = "pseudo-labels.json"
#: Its format; a reader refuses another.
FORMAT = "petseg-bench pseudo-labels 1"
SPLIT_DIR = "TrainVal"  # the processed layout's trainval folder


def read_manifest(folder: Path) -> dict:
    """The manifest of a finished pseudo-label folder, or one DataError line."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise DataError(f"--pseudo {folder}: no such folder")
    if not path.is_file():
        raise DataError(f"--pseudo {folder}: no {MANIFEST}; make the folder with `petseg-bench pseudo-label`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"--pseudo {path} is unreadable: {one_line(exc, 100)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"--pseudo {path} is not a pseudo-label manifest ({FORMAT!r} expected)")
    if not data.get("complete"):
        raise DataError(f"--pseudo {folder}: pseudo-labelling did not finish; run the same `pseudo-label` "
                        f"command again to complete it")
    return data


def refuse_labelled_names(names, data_root: Path, what: str) -> None:
    """No test-split name (listed or stored) may be pseudo-labelled, since a test image must
    never be trained on; nor a labelled trainval image (one stored in ``data_root``), which
    could be a validation image. A trainval name listed without an image is fine: the
    unlabelled photos are exactly those. The labelled data must be readable (one line)."""
    stored = list_split(data_root, "trainval")
    for split, taken in (("test", test_names(data_root) | split_names(data_root, "test")),
                         ("trainval", {s.name for s in stored.samples} | {d.name for d in stored.dropped})):
        clash = sorted(set(names) & taken)
        if clash:
            raise DataError(f"{what}: {len(clash)} image(s) are in the labelled data's {split} split "
                            f"(e.g. {clash[0]}); refused: pseudo-labelled images must be images the labelled "
                            f"data does not have")


@dataclass
class PseudoSplit:
    prepared: PreparedSplit
    info: dict  # recorded in the checkpoint: folder, fingerprint, teacher, threshold


def load_pseudo(folder: Path, data_root: Path, cache_dir: Path | None = None, progress: bool = False) -> PseudoSplit:
    """The pseudo-labelled images of ``folder``, prepared (void kept as ignore), checked
    against the labelled data, with what a checkpoint records of them."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not (folder / SPLIT_DIR).is_dir():
        raise DataError(f"--pseudo {folder}: no {SPLIT_DIR}/ folder (expected {SPLIT_DIR}/color and {SPLIT_DIR}/label)")
    prepared = prepare(folder, "trainval", "ignore", cache_dir, progress=progress)
    if len(prepared) == 0:
        raise DataError(f"--pseudo {folder}: no usable pseudo-labelled image")
    refuse_labelled_names(prepared.names, data_root, f"--pseudo {folder}")
    teacher = manifest.get("teacher") or {}
    info = {"folder": str(folder.resolve()), "fingerprint": prepared.fingerprint, "n_images": len(prepared),
            "teacher_sha256": teacher.get("sha256"), "teacher_model": teacher.get("model"),
            "threshold": manifest.get("threshold"), "wrong_species": manifest.get("wrong_species"),
            "kept_fraction": manifest.get("kept_fraction")}
    return PseudoSplit(prepared, info)
