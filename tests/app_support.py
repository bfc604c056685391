"""Shared by the app's tests: synthetic pet photos and tiny trained checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import COLOURS, quiet, train, write_dataset
from petseg_bench.config import TrainConfig

MODELS = ["unet", "point_clip_unet"]
TINY = dict(in_size=32, base_channels=4, backbone="clip:petseg-tiny-vit:none")
TRAIN = TrainConfig(epochs=2, lr=1e-2, batch_size=4, workers=0, precision="fp32", device="cpu",
                    val_fraction=0.25, patience=0)


def pet_photo(h: int = 64, w: int = 80, species: int = 2) -> np.ndarray:
    """A synthetic 'pet': a rectangle of the species' colour on the background colour."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = COLOURS[0]
    image[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = COLOURS[species]
    return image


def save(image: np.ndarray, path: Path, **kw) -> Path:
    Image.fromarray(image).save(path, **kw)
    return path


_TRAINED: dict[int, Path] = {}


def train_checkpoints(tmp_path_factory) -> Path:
    """MODELS trained tiny on 64 px synthetic pets: ``<dir>/<model>/best.pt`` (once per
    session: the test modules share them)."""
    key = id(tmp_path_factory)
    if key in _TRAINED and _TRAINED[key].is_dir():
        return _TRAINED[key]
    root = write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=3, n_dog=3, size=(64, 64))
    out = tmp_path_factory.mktemp("checkpoints")
    cache = tmp_path_factory.mktemp("prepared")
    for name in MODELS:
        train(name, TRAIN, TINY, root, out, cache_dir=cache, log=quiet)
    _TRAINED[key] = out
    return out
