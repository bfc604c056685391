"""The prepared cache: every JPEG and mask decoded and cleaned once, then memory-mapped.

A split is stored as two flat uint8 arrays (images and labels at original resolution,
concatenated) plus an index of names, species and shapes, under a folder keyed by the
data fingerprint and the void mode. Training and the sweep read from it; nothing
decodes a JPEG twice. The folder is written to a temporary name and renamed, so an
interrupted ``prepare`` leaves no half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import SampleError, load_sample
from .layout import SPLITS, Dropped, SplitListing, list_split

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("PETSEG_CACHE")
    if env:
        return Path(env) / "prepared"
    import platformdirs

    return Path(platformdirs.user_cache_dir("petseg-bench")) / "prepared"


def fingerprint(listing: SplitListing) -> str:
    """Content hash of a split's files (names and bytes of images and masks)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:{listing.split}".encode())
    for s in sorted(listing.samples, key=lambda s: s.name):
        h.update(f"{s.name}:{s.species}:".encode())
        for p in (s.image, s.mask):
            h.update(hashlib.sha1(p.read_bytes()).digest())
    return h.hexdigest()[:16]


@dataclass
class PreparedSplit:
    """A split's decoded images and labels, memory-mapped, indexable by position."""

    root: Path
    split: str
    names: list[str]
    species: np.ndarray
    shapes: np.ndarray  # [N, 2] (height, width)
    offsets: np.ndarray  # [N + 1] pixel offsets into the flat arrays
    images_flat: np.ndarray
    labels_flat: np.ndarray
    dropped: list[Dropped]
    absent: list[str]
    fingerprint: str
    void: str
    layout: str

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.images_flat[a * 3:b * 3].reshape(h, w, 3)

    def label(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        return self.labels_flat[self.offsets[i]:self.offsets[i + 1]].reshape(h, w)

    def index_of(self, names: list[str]) -> list[int]:
        pos = {n: i for i, n in enumerate(self.names)}
        return [pos[n] for n in names]


def prepare(data_root: Path, split: str, void: str = "nearest", cache_dir: Path | None = None,
            workers: int = 2, progress: bool = False) -> PreparedSplit:
    """Load ``split`` from the prepared cache, building the cache first if needed."""
    listing = list_split(Path(data_root), split)
    fp = fingerprint(listing)
    folder = Path(cache_dir or default_cache_dir()) / f"{split}-{fp}-{void}"
    if not (folder / "index.json").is_file():
        _build(listing, folder, void, workers, progress)
    return _open(folder, fp)


def prepare_all(data_root: Path, void: str = "nearest", cache_dir: Path | None = None,
                workers: int = 2, progress: bool = False) -> dict[str, PreparedSplit]:
    return {s: prepare(data_root, s, void, cache_dir, workers, progress) for s in SPLITS}


def _build(listing: SplitListing, folder: Path, void: str, workers: int, progress: bool) -> None:
    def work(sample):
        try:
            return sample, load_sample(sample.image, sample.mask, sample.layout, sample.species, void), None
        except SampleError as exc:
            return sample, None, exc

    samples = sorted(listing.samples, key=lambda s: s.name)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL and scipy release the GIL
        results = pool.map(work, samples)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(samples), desc=f"prepare {listing.split}", unit="img")
        kept, dropped = [], list(listing.dropped)
        for sample, loaded, exc in results:
            if loaded is None:
                path = sample.mask if exc.file == "mask" else sample.image
                dropped.append(Dropped(sample.name, str(path), str(exc)))
            else:
                kept.append((sample, loaded))

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        images = np.concatenate([img.reshape(-1) for _, (img, _, _) in kept] or [np.zeros(0, np.uint8)])
        labels = np.concatenate([lab.reshape(-1) for _, (_, lab, _) in kept] or [np.zeros(0, np.uint8)])
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        del images, labels
        index = {
            "version": CACHE_VERSION,
            "split": listing.split,
            "void": void,
            "layout": kept[0][0].layout if kept else "",
            "names": [s.name for s, _ in kept],
            "species": [sp for _, (_, _, sp) in kept],
            "shapes": [list(img.shape[:2]) for _, (img, _, _) in kept],
            "dropped": [[d.name, d.path, d.reason] for d in dropped],
            "absent": listing.absent,
        }
        (tmp / "index.json").write_text(json.dumps(index))
        if folder.exists() and not (folder / "index.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a broken leftover (no index): replace it
        if folder.exists():  # a concurrent prepare finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open(folder: Path, fp: str) -> PreparedSplit:
    index = json.loads((folder / "index.json").read_text())
    shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]).astype(np.int64)
    return PreparedSplit(
        root=folder, split=index["split"], names=index["names"],
        species=np.asarray(index["species"], dtype=np.int64), shapes=shapes, offsets=offsets,
        images_flat=_load(folder / "images.npy"),
        labels_flat=_load(folder / "labels.npy"),
        dropped=[Dropped(*d) for d in index["dropped"]], absent=index["absent"],
        fingerprint=fp, void=index["void"], layout=index["layout"],
    )


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)
