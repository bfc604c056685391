"""Find the samples of a split on disk, in the official or the seed's processed layout.

Official (the Oxford-IIIT Pet release)::

    images/<name>.jpg  annotations/trimaps/<name>.png  annotations/{list,trainval,test}.txt

Processed (the seed study's)::

    TrainVal/{color,label}/<name>.*   Test/{color,label}/<name>.*

Only file names are looked at here; decoding and cleaning live in ``decode``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

SPLITS = ("trainval", "test")
OFFICIAL_SPLIT_FILES = {"trainval": "annotations/trainval.txt", "test": "annotations/test.txt"}
PROCESSED_SPLIT_DIRS = {"trainval": "TrainVal", "test": "Test"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path
    species: int  # 1 cat, 2 dog (the official list.txt); 0 when only the mask can tell
    layout: str  # "official" | "processed"


@dataclass(frozen=True)
class Dropped:
    """A sample left out, with the reason; every one is listed to the user."""

    name: str
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class SplitListing:
    split: str
    samples: list[Sample]
    dropped: list[Dropped]
    absent: list[str]  # names in the split file with neither image nor mask on disk


def file_problem(path: Path | str) -> str | None:
    """Why ``path`` cannot be read as a data file, in a few words, or None when it is a
    non-empty regular file (symlinks followed). Looks at the metadata only: never opens
    the file, so a FIFO or a device cannot block or be consumed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symlink (its target does not exist)" if os.path.lexists(path) else "file does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "empty file (0 bytes)" if st.st_size == 0 else None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "something else")
    return f"is {kind}, not a regular file"


def detect_layout(root: Path) -> str:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data root {root} does not exist (set --data-root or PETSEG_DATA, or run `petseg-bench data download`)")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    if (root / "images").is_dir() or (root / "annotations").is_dir():
        return "official"
    if any((root / d).is_dir() for d in PROCESSED_SPLIT_DIRS.values()):
        return "processed"
    raise DataError(f"data root {root} has neither the official layout (images/, annotations/) "
                    f"nor the processed one (TrainVal/, Test/)")


def list_split(root: Path, split: str) -> SplitListing:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    layout = detect_layout(root)
    return _list_official(root, split) if layout == "official" else _list_processed(root, split)


def _read_list(path: Path) -> list[tuple[str, int]]:
    """``name class_id species breed_id`` lines; '#' lines are comments."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3 or parts[2] not in ("1", "2"):
            raise DataError(f"{path}:{n}: expected 'name class_id species(1|2) breed_id', got {line[:60]!r}")
        rows.append((parts[0], int(parts[2])))
    return rows


def _list_official(root: Path, split: str) -> SplitListing:
    split_file = root / OFFICIAL_SPLIT_FILES[split]
    if not split_file.is_file():
        raise DataError(f"split file {split_file} is missing")
    images_dir, trimaps_dir = root / "images", root / "annotations" / "trimaps"
    for d in (images_dir, trimaps_dir):
        if not d.is_dir():
            raise DataError(f"folder {d} is missing")
    images, bad_images = _stems(images_dir, (".jpg",))
    trimaps, bad_trimaps = _stems(trimaps_dir, (".png",))
    samples, dropped, absent = [], [], []
    for name, species in _read_list(split_file):
        img, tri = images.get(name), trimaps.get(name)
        bad = _unusable(root, bad_images.get(name), bad_trimaps.get(name))
        if bad:
            dropped.append(Dropped(name, *bad))
        elif img and tri:
            samples.append(Sample(name, img, tri, species, "official"))
        elif img:
            dropped.append(Dropped(name, _rel(img, root), f"no trimap annotations/trimaps/{name}.png"))
        elif tri:
            dropped.append(Dropped(name, _rel(tri, root), f"no image images/{name}.jpg"))
        else:
            absent.append(name)
    return SplitListing(split, samples, dropped, absent)


def _list_processed(root: Path, split: str) -> SplitListing:
    base = root / PROCESSED_SPLIT_DIRS[split]
    color, label = base / "color", base / "label"
    for d in (color, label):
        if not d.is_dir():
            raise DataError(f"folder {d} is missing (processed layout needs {PROCESSED_SPLIT_DIRS[split]}/color and /label)")
    images, bad_images = _stems(color, IMAGE_EXTS)
    labels, bad_labels = _stems(label, (".png",))
    samples, dropped = [], []
    for name in sorted(set(images) | set(labels) | set(bad_images) | set(bad_labels)):
        img, lab = images.get(name), labels.get(name)
        bad = _unusable(root, bad_images.get(name), bad_labels.get(name))
        if bad:
            dropped.append(Dropped(name, *bad))
        elif img and lab:
            samples.append(Sample(name, img, lab, 0, "processed"))
        elif img:
            dropped.append(Dropped(name, _rel(img, root), "no label PNG"))
        else:
            dropped.append(Dropped(name, _rel(lab, root), "no colour image"))
    return SplitListing(split, samples, dropped, [])


def _stems(folder: Path, exts: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, tuple[Path, str]]]:
    """Usable files by stem, and the unusable ones (a directory, a FIFO, a dangling
    symlink, an empty file... named like a data file) by stem with the reason.
    Only metadata is read: nothing here opens a file."""
    out, bad = {}, {}
    with os.scandir(folder) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in exts and not entry.name.startswith("."):
                problem = file_problem(entry.path)
                if problem:
                    bad[stem] = (Path(entry.path), problem)
                else:
                    out[stem] = Path(entry.path)
    return out, bad


def _unusable(root: Path, image: tuple[Path, str] | None, mask: tuple[Path, str] | None) -> tuple[str, str] | None:
    """(path, reason) of a sample whose image or mask file cannot be read, else None."""
    if image and mask:
        return _rel(image[0], root), f"{image[1]}; mask {_rel(mask[0], root)}: {mask[1]}"
    if image or mask:
        path, reason = image or mask
        return _rel(path, root), reason
    return None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
