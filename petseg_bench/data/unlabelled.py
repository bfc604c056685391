"""Extra training images without masks (``oxford-iiit-pet-unlabelled``), for pretraining.

A folder with ``images/<name>.jpg`` and ``labels.csv`` (``name,species,...``; species 1
cat, 2 dog). They serve phases that need no mask (reconstruction). A name of the labelled
dataset's test split is refused outright: no test image may ever reach training.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .decode import SampleError, load_rgb
from .letterbox import Letterbox


@dataclass(frozen=True)
class UnlabelledImages:
    root: Path
    names: tuple[str, ...]
    species: np.ndarray  # 1 cat, 2 dog

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> Path:
        return self.root / "images" / f"{self.names[i]}.jpg"


def test_names(data_root: Path) -> set[str]:
    """Names of the labelled dataset's official test split (empty if it has none)."""
    listing = Path(data_root) / "annotations" / "test.txt"
    if not listing.is_file():
        return set()
    return {line.split()[0] for line in listing.read_text().splitlines() if line.strip() and not line.startswith("#")}


def read_unlabelled(root: Path, data_root: Path) -> UnlabelledImages:
    """The images listed in ``root/labels.csv`` that exist, none from ``data_root``'s test split."""
    root = Path(root)
    table = root / "labels.csv"
    if not table.is_file():
        raise DataError(f"unlabelled images: {table} not found (expected <dir>/labels.csv and <dir>/images/*.jpg)")
    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("name")]
    leaked = sorted({r["name"] for r in rows} & test_names(data_root))
    if leaked:
        raise DataError(f"unlabelled images in {root} include {len(leaked)} test-split names (e.g. {leaked[0]}); "
                        f"refused: test images must never be trained on")
    rows = [r for r in rows if (root / "images" / f"{r['name']}.jpg").is_file()]
    if not rows:
        raise DataError(f"unlabelled images: no image of {table} exists under {root / 'images'}")
    return UnlabelledImages(root, tuple(r["name"] for r in rows), np.array([int(r["species"]) for r in rows]))


class UnlabelledSet(Dataset):
    """Items like :class:`~.datasets.LetterboxedSet`'s, with an all-ignore label (no mask):
    ``image`` uint8 [3, S, S], ``label`` int64 [S, S] of 255, ``point`` [2], ``index``,
    ``species`` (labels.csv's: 1 cat, 2 dog)."""

    def __init__(self, images: UnlabelledImages, size: int):
        self.images, self.size, self.epoch = images, size, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> dict:
        try:
            image = load_rgb(self.images.path(k))
        except SampleError as exc:
            raise DataError(f"unlabelled image {self.images.path(k)}: {exc}") from None
        boxed = Letterbox.fit(image.shape[0], image.shape[1], self.size).apply(image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1))),
            "label": torch.full((self.size, self.size), 255, dtype=torch.int64),
            "point": torch.tensor((self.size // 2, self.size // 2), dtype=torch.int64),
            "index": -1 - k,
            "species": int(self.images.species[k]),
        }
