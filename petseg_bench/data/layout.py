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
from dataclasses import dataclass, field
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
    #: One line per name listed (or stored) more than once, which places; counted once.
    duplicates: list[str] = field(default_factory=list)


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


def _read_list(path: Path, duplicates: list[str] | None = None) -> list[tuple[str, int]]:
    """``name class_id species breed_id`` lines; '#' lines are comments. A name listed
    again is kept once (its first line); ``duplicates`` gets one line per such name."""
    rows, lines_of = [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3 or parts[2] not in ("1", "2"):
            raise DataError(f"{path}:{n}: expected 'name class_id species(1|2) breed_id', got {line[:60]!r}")
        if parts[0] in lines_of:
            lines_of[parts[0]].append(n)
            continue
        lines_of[parts[0]] = [n]
        rows.append((parts[0], int(parts[2])))
    if duplicates is not None:
        duplicates += [f"{path}: {name} is listed {len(ns)} times (lines {', '.join(map(str, ns))}); counted once"
                       for name, ns in lines_of.items() if len(ns) > 1]
    return rows


def split_names(root: Path, split: str) -> set[str]:
    """The names a split lists (its split file, or its folders in the processed layout),
    whether or not their files are usable; empty when the split cannot be listed."""
    root = Path(root)
    try:
        if detect_layout(root) == "official":
            path = root / OFFICIAL_SPLIT_FILES[split]
            return {name for name, _ in _read_list(path)} if path.is_file() else set()
        base = root / PROCESSED_SPLIT_DIRS[split]
        return {os.path.splitext(e.name)[0] for d in (base / "color", base / "label") if d.is_dir()
                for e in os.scandir(d) if not e.name.startswith(".")}
    except (DataError, OSError):
        return set()


def split_overlap(root: Path) -> list[str]:
    """Names listed in both trainval and test (sorted): a model tested on them has seen them."""
    return sorted(split_names(root, "trainval") & split_names(root, "test"))


def refuse_overlap(root: Path, allow: bool = False, log=None, override: str | None = None) -> list[str]:
    """A test image also listed in trainval would be scored by a model trained on it: one
    :class:`DataError` line naming the first few, unless ``allow`` (``override``, the
    option that allows it on an evaluation-only dataset, is named in the message; ``log``
    gets a warning line). Returns the names in both splits."""
    both = split_overlap(root)
    if not both:
        return both
    names = f"{', '.join(both[:3])}{' ...' if len(both) > 3 else ''}"
    if not allow:
        hint = f", or pass {override} if this data is only evaluated" if override else ""
        raise DataError(f"data root {root}: {len(both)} image(s) are listed in both trainval and test ({names}): "
                        f"test images must not be trained on; remove them from one split list{hint}")
    if log is not None:
        log(f"warning: {override or 'allowed'}: {len(both)} test image(s) are also in trainval ({names}); "
            f"recorded with the result")
    return both


def _list_official(root: Path, split: str) -> SplitListing:
    split_file = root / OFFICIAL_SPLIT_FILES[split]
    if not split_file.is_file():
        raise DataError(f"split file {split_file} is missing")
    images_dir, trimaps_dir = root / "images", root / "annotations" / "trimaps"
    for d in (images_dir, trimaps_dir):
        if not d.is_dir():
            raise DataError(f"folder {d} is missing")
    stored_twice: dict[str, str] = {}
    images, bad_images = _stems(images_dir, (".jpg",), stored_twice)
    trimaps, bad_trimaps = _stems(trimaps_dir, (".png",), stored_twice)
    samples, dropped, absent, duplicates = [], [], [], []
    for name, species in _read_list(split_file, duplicates):
        if name in stored_twice:
            duplicates.append(stored_twice[name])
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
    return SplitListing(split, samples, dropped, absent, duplicates)


def _list_processed(root: Path, split: str) -> SplitListing:
    base = root / PROCESSED_SPLIT_DIRS[split]
    color, label = base / "color", base / "label"
    for d in (color, label):
        if not d.is_dir():
            raise DataError(f"folder {d} is missing (processed layout needs {PROCESSED_SPLIT_DIRS[split]}/color and /label)")
    stored_twice: dict[str, str] = {}
    images, bad_images = _stems(color, IMAGE_EXTS, stored_twice)
    labels, bad_labels = _stems(label, (".png",), stored_twice)
    duplicates = list(stored_twice.values())
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
    return SplitListing(split, samples, dropped, [], duplicates)


def _stems(folder: Path, exts: tuple[str, ...],
           duplicates: dict[str, str] | None = None) -> tuple[dict[str, Path], dict[str, tuple[Path, str]]]:
    """Usable files by stem, and the unusable ones (a directory, a FIFO, a dangling
    symlink, an empty file... named like a data file) by stem with the reason.
    Only metadata is read: nothing here opens a file. Two files of one stem (``a.jpg``,
    ``a.JPG``): the first by name is kept, ``duplicates[stem]`` says so."""
    out, bad, seen = {}, {}, {}
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in exts and not entry.name.startswith("."):
            if stem in seen:
                if duplicates is not None:
                    duplicates[stem] = f"{folder}: {stem} is stored twice ({seen[stem]}, {entry.name}); {seen[stem]} is used"
                continue
            seen[stem] = entry.name
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
