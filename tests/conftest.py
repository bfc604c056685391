"""Shared test set-up: offline environment, a private cache, tiny synthetic datasets.

Nothing here touches the user's cache or the network. ``make_dataset`` writes a few
20x30 px samples in either layout; ``real_data`` points at the partial real copy and
skips, with a reason, where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

#: The partial real copy (official layout); ``PETSEG_TEST_DATA`` overrides it.
REAL_DATA = Path(os.environ.get("PETSEG_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared/data/oxford-iiit-pet")

#: Colours of the synthetic images: background, cat, dog (uniform, so JPEG keeps them).
COLOURS = {0: (40, 120, 60), 1: (220, 60, 40), 2: (40, 60, 220)}

CAT_BREED, DOG_BREED = "Abyssinian", "beagle"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every prepared cache of the session lands in a temporary folder."""
    old = os.environ.get("PETSEG_CACHE")
    os.environ["PETSEG_CACHE"] = str(tmp_path_factory.mktemp("petseg-cache"))
    yield
    if old is None:
        os.environ.pop("PETSEG_CACHE", None)
    else:
        os.environ["PETSEG_CACHE"] = old


def pet_box(index: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pet rectangle of sample ``index``: inside the
    image with room for the 1-px void border, a little different per sample."""
    h, w = size
    top, left = 3 + index % 3, 4 + index % 4
    bottom, right = max(top + 2, h - 4), max(left + 2, w - 5)
    return top, left, bottom, right


def sample_arrays(index: int, species: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RGB image and official trimap (1 pet, 2 background, 3 void border) of one sample."""
    h, w = size
    top, left, bottom, right = pet_box(index, size)
    trimap = np.full((h, w), 2, np.uint8)
    trimap[top - 1:bottom + 1, left - 1:right + 1] = 3
    trimap[top:bottom, left:right] = 1
    image = np.empty((h, w, 3), np.uint8)
    image[:] = COLOURS[0]
    image[trimap == 1] = COLOURS[species]
    return image, trimap


def sample_names(n_cat: int, n_dog: int, start: int = 1) -> list[tuple[str, int]]:
    """Official-style names: cats Capitalised, dogs lower-case; (name, species)."""
    return ([(f"{CAT_BREED}_{start + i}", 1) for i in range(n_cat)]
            + [(f"{DOG_BREED}_{start + i}", 2) for i in range(n_dog)])


def list_line(name: str, species: int) -> str:
    class_id, breed = (1, 1) if species == 1 else (6, 1)
    return f"{name} {class_id} {species} {breed}"


LIST_HEADER = [
    "#Image CLASS-ID SPECIES BREED ID",
    "#ID: 1:37 Class ids",
    "#SPECIES: 1:Cat 2:Dog",
    "#BREED ID: 1-25:Cat 1:12:Dog",
]


def write_dataset(root: Path, layout: str = "official", n_cat: int = 2, n_dog: int = 3,
                  size: tuple[int, int] = (20, 30)) -> Path:
    """Write a synthetic dataset under ``root``: ``n_cat`` cats and ``n_dog`` dogs in each
    of trainval and test, images ``size`` = (height, width). Returns ``root``."""
    root = Path(root)
    splits = {"trainval": sample_names(n_cat, n_dog, 1), "test": sample_names(n_cat, n_dog, 100)}
    if layout == "official":
        (root / "images").mkdir(parents=True)
        (root / "annotations" / "trimaps").mkdir(parents=True)
        all_rows = []
        for split, rows in splits.items():
            for i, (name, species) in enumerate(rows):
                image, trimap = sample_arrays(i, species, size)
                Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
                Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
            text = "\n".join(list_line(n, s) for n, s in rows) + "\n"
            (root / "annotations" / f"{split}.txt").write_text(text)
            all_rows += rows
        (root / "annotations" / "list.txt").write_text(
            "\n".join(LIST_HEADER + [list_line(n, s) for n, s in sorted(all_rows)]) + "\n")
    elif layout == "processed":
        for split, folder in (("trainval", "TrainVal"), ("test", "Test")):
            (root / folder / "color").mkdir(parents=True)
            (root / folder / "label").mkdir(parents=True)
            for i, (name, species) in enumerate(splits[split]):
                image, trimap = sample_arrays(i, species, size)
                label = np.zeros(trimap.shape, np.uint8)
                label[trimap == 1] = species
                label[trimap == 3] = 255
                Image.fromarray(image).save(root / folder / "color" / f"{name}.jpg", quality=95)
                Image.fromarray(label).save(root / folder / "label" / f"{name}.png")
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return root


@pytest.fixture
def make_dataset(tmp_path):
    """Factory: ``make_dataset(root=None, layout="official", n_cat=2, n_dog=3, size=(20, 30))``
    writes a synthetic dataset (under ``tmp_path`` unless ``root`` is given) and
    returns its root."""
    count = [0]

    def make(root: Path | None = None, layout: str = "official", n_cat: int = 2, n_dog: int = 3,
             size: tuple[int, int] = (20, 30)) -> Path:
        if root is None:
            count[0] += 1
            root = tmp_path / f"data{count[0]}"
        return write_dataset(Path(root), layout, n_cat, n_dog, size)

    return make


@pytest.fixture
def real_data() -> Path:
    """The partial real copy; the test is skipped where it is not present."""
    if not (REAL_DATA / "annotations").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


def quiet(_message: str) -> None:
    pass


def one_error_line(text: str) -> str:
    """The single ``Error:`` line of a failed CLI call (and no traceback)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1 and lines[0].startswith("Error:"), text
    return lines[0]


def train(name, cfg, overrides, data_root, out, *, resume=False, cache_dir=None, log=print, on_epoch_end=None):
    """Train ``name`` with ``overrides`` split into generic config fields and the options
    the model declares (so one dict of tiny settings serves every model)."""
    from petseg_bench.engine.training import TrainJob
    from petseg_bench.engine.training import train as run_training
    from petseg_bench.plugins import get_registry
    from petseg_bench.specs import GENERIC_FIELDS

    spec = get_registry().get("model", name)
    declared = {o.name for o in spec.options}
    fields = {k: v for k, v in overrides.items() if k in GENERIC_FIELDS}
    options = {k: v for k, v in overrides.items() if k in declared}
    job = TrainJob(model=name, cfg=cfg, data_root=data_root, out_dir=out, model_fields=fields, model_options=options,
                   resume=resume, cache_dir=cache_dir)
    return run_training(job, log=log, on_epoch_end=on_epoch_end)
