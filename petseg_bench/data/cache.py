"""The prepared cache: every JPEG and mask decoded and cleaned once, then memory-mapped.

A split is stored as two flat uint8 arrays (images and labels at original resolution,
concatenated) plus an index of names, species and shapes, under a folder keyed by the
data fingerprint and the void mode, with ``dropped.txt`` listing every sample left out
and why. Training and the sweep read from it; nothing decodes a JPEG twice.

Nothing half-made is ever used: the folder is written under a temporary name (with an
``owner`` file naming the writing process) and renamed; a temporary folder whose
writer is gone (a ``prepare`` killed with -9) is removed by the next ``prepare``; a
final folder that does not check out when opened (truncated array, malformed index,
missing file) is rebuilt, with one line saying so. A cache folder that cannot be
written (read-only, disk full) is one :class:`~petseg_bench.errors.DataError` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import pid_alive
from ..errors import DataError, one_line, os_error_text
from .decode import VOID_MODES, SampleError, load_sample
from .layout import SPLITS, Dropped, SplitListing, file_problem, list_split

#: 2: void ties go to the lowest class id (labels changed), ``dropped.txt``, ``owner``.
CACHE_VERSION = 2
#: The list of dropped samples inside each prepared folder.
DROPPED_FILE = "dropped.txt"
#: Inside a temporary folder: "PID HOST" of the process writing it.
OWNER_FILE = "owner"
#: Temporary folders: ``.tmp-<final name>-<random>`` (and ``.<final name>-<random>``,
#: the name used before version 2) and ``.tmp-trash-<random>`` (a damaged folder
#: being removed).
TEMP_DIR = re.compile(r"^\.(tmp-)?((trainval|test)-[0-9a-f]{16}-[a-z]+-.+|trash-.+)$")
#: A temporary folder with no owner (or another host's) older than this is a leftover.
STALE_AFTER_S = 600.0
#: ... and one whose owner still runs but that has not changed for this long (the PID
#: was reused): no prepare takes that long.
OWNER_STALE_AFTER_S = 6 * 3600.0

#: The temporary folders this process is writing (others with our PID are leftovers of
#: a previous process that had the same PID, as happens in containers).
_writing: set[str] = set()

_ARRAYS = ("images.npy", "labels.npy")


def default_cache_dir() -> Path:
    env = os.environ.get("PETSEG_CACHE")
    if env:
        return Path(env) / "prepared"
    import platformdirs

    return Path(platformdirs.user_cache_dir("petseg-bench")) / "prepared"


# --- notices: the one-line messages prepare() gives besides its result --------------

_sink: Callable[[str], None] | None = None
_noted: set[str] = set()


def set_notice_sink(sink: Callable[[str], None] | None) -> None:
    """Where :func:`prepare` sends its one-line notices.

    With a sink, it gets every repair line (a damaged cache rebuilt, leftovers of a
    killed ``prepare`` removed) and, once per prepared folder per process, the
    :func:`dropped_summary` line of a split that left samples out. Without one (the
    default), repair lines go to stderr and the dropped line is not sent (callers such
    as ``data check`` list the dropped samples themselves)."""
    global _sink
    _sink = sink
    _noted.clear()


def _notice(line: str) -> None:
    if _sink is not None:
        _sink(line)
    else:
        print(line, file=sys.stderr, flush=True)


# --- the fingerprint ---------------------------------------------------------------

def fingerprint(listing: SplitListing, digests: dict[str, tuple[bytes, bytes]] | None = None) -> str:
    """Content hash of a split's files (names and bytes of images and masks) and of the
    cache version (what the cleaning does to them). ``digests``: :func:`file_digests`
    of the listing, when already computed."""
    digests = file_digests(listing) if digests is None else digests
    h = hashlib.sha256(f"v{CACHE_VERSION}:{listing.split}".encode())
    for s in sorted(listing.samples, key=lambda s: s.name):
        h.update(f"{s.name}:{s.species}:".encode())
        for d in digests[s.name]:
            h.update(d)
    return h.hexdigest()[:16]


def file_digests(listing: SplitListing) -> dict[str, tuple[bytes, bytes]]:
    """Per sample name, the SHA-1 digests of its image's and its mask's bytes."""
    return {s.name: (_file_digest(s.image), _file_digest(s.mask)) for s in listing.samples}


#: Inside each prepared folder: per sample, its files and their digests, so that a
#: resume on changed data can say which files changed.
FILES_FILE = "files.json"


def _manifest(listing: SplitListing, digests: dict[str, tuple[bytes, bytes]]) -> dict[str, list]:
    return {s.name: [s.species, str(s.image.name), digests[s.name][0].hex()[:16],
                     str(s.mask.name), digests[s.name][1].hex()[:16]] for s in listing.samples}


def _save_manifest(folder: Path, manifest: dict) -> None:
    """Write a prepared folder's file list once (folders of older versions get theirs
    when next opened); a cache that cannot be written only loses the naming of changed
    files later, so a failure here is quiet."""
    path = folder / FILES_FILE
    if path.is_file():
        return
    try:
        from ..atomic import write_json_atomic

        write_json_atomic(path, manifest)
    except OSError:
        pass


def refuse_changed(sp: "PreparedSplit", recorded: str | None, what: str) -> None:
    """``what`` (e.g. ``--resume: RUN was made``) on other data than ``sp``'s: one line
    naming the files that changed. A record without a fingerprint is not checked here."""
    if recorded and recorded != sp.fingerprint:
        raise DataError(f"{what} on other data ({data_change(sp, recorded)})")


def data_change(sp: "PreparedSplit", old: str | None) -> str:
    """How the split ``sp`` differs from the data of fingerprint ``old``, in one line:
    ``trainval fingerprint A -> B: 2 changed (x.jpg, y.png), 1 added (z.jpg), ...``."""
    head = f"{sp.split} fingerprint {old} -> {sp.fingerprint}"
    if not old:
        return f"{head}: the record has no data fingerprint"
    path = sp.root.parent / f"{sp.split}-{old}-{sp.void}" / FILES_FILE
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict) or sp.files is None:
        return (f"{head}; which files changed cannot be named: the prepared cache {sp.root.parent} "
                f"has no file list of the old data")
    now = sp.files
    changed = []
    for name in sorted(set(before) & set(now)):
        old_row, new_row = before[name], now[name]
        if old_row != new_row:
            parts = [f for f, a, b in (("species", old_row[0], new_row[0]), (new_row[1], old_row[2], new_row[2]),
                                       (new_row[3], old_row[4], new_row[4])) if a != b] or [name]
            changed += parts
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for what, v in (("changed", changed), ("added", added), ("removed", removed)) if v]
    if not parts:
        return (f"{head}: the same files, hashed by another version of petseg-bench (prepared cache "
                f"version {CACHE_VERSION}); start a new run")
    return f"{head}: {', '.join(parts)}"


def _file_digest(path: Path) -> bytes:
    """SHA-1 of a regular file's bytes; for anything else (a FIFO that appeared since
    the listing, a file gone or unreadable) a digest of the reason, so the file is
    never opened here and the decode step drops the sample with that reason."""
    problem = file_problem(path)
    if problem is None:
        try:
            return hashlib.sha1(Path(path).read_bytes()).digest()
        except OSError as exc:
            problem = os_error_text(exc)
    return hashlib.sha1(f"unreadable: {problem}".encode()).digest()


# --- the prepared split ----------------------------------------------------------------

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
    #: From the listing, not the cache: names listed or stored twice (counted once) and,
    #: per name, [species, image, digest, mask, digest] (see :func:`data_change`).
    duplicates: list[str] = field(default_factory=list)
    files: dict[str, list] | None = None

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

    @property
    def dropped_list(self) -> Path:
        """The file listing every dropped sample with its reason (inside the cache folder)."""
        return self.root / DROPPED_FILE


def dropped_summary(sp: PreparedSplit) -> str | None:
    """``N test images dropped (list: PATH)``, or None when the split dropped nothing.

    PATH is the split's ``dropped.txt`` in the prepared cache (rewritten here if it has
    gone missing), one ``path: reason`` line per dropped sample."""
    n = len(sp.dropped)
    if n == 0:
        return None
    path = sp.dropped_list
    if not path.is_file():
        try:
            path.write_text(_dropped_text(sp.split, sp.dropped, sp.absent))
        except OSError:
            pass  # the line still says how many; `data check` lists them
    return f"{n} {sp.split} image{'s' if n != 1 else ''} dropped (list: {path})"


def _dropped_text(split: str, dropped: list[Dropped], absent: list[str]) -> str:
    lines = [f"# {split}: {len(dropped)} samples dropped, one 'path: reason' per line"]
    lines += [d.line() for d in dropped]
    if absent:
        lines.append(f"# {split}: {len(absent)} names listed in the split file have neither image nor mask on disk")
        lines += absent
    return "\n".join(lines) + "\n"


# --- prepare -----------------------------------------------------------------------

def prepare(data_root: Path, split: str, void: str = "nearest", cache_dir: Path | None = None,
            workers: int = 2, progress: bool = False) -> PreparedSplit:
    """Load ``split`` from the prepared cache, building (or rebuilding) it first if needed."""
    if void not in VOID_MODES:
        raise DataError(f"void mode must be one of {', '.join(VOID_MODES)}, got {void!r}")
    listing = list_split(Path(data_root), split)
    digests = file_digests(listing)
    fp = fingerprint(listing, digests)
    base = Path(cache_dir or default_cache_dir())
    folder = base / f"{split}-{fp}-{void}"
    clean_leftovers(base)
    sp = None
    if folder.exists():
        try:
            sp = _open(folder, fp, split, void)
        except _Damaged as exc:
            _notice(f"prepared cache {folder} is damaged ({exc}); rebuilding it")
            _discard(folder)
    if sp is None:
        _build(listing, folder, void, workers, progress)
        try:
            sp = _open(folder, fp, split, void)
        except _Damaged as exc:
            raise DataError(f"prepared cache {folder} is unreadable right after it was written ({exc})") from None
    sp.duplicates, sp.files = list(listing.duplicates), _manifest(listing, digests)
    _save_manifest(folder, sp.files)
    if _sink is not None and str(folder) not in _noted:
        _noted.add(str(folder))
        note = dropped_summary(sp)
        if note:
            _sink(note)
    return sp


def prepare_all(data_root: Path, void: str = "nearest", cache_dir: Path | None = None,
                workers: int = 2, progress: bool = False) -> dict[str, PreparedSplit]:
    return {s: prepare(data_root, s, void, cache_dir, workers, progress) for s in SPLITS}


# --- building --------------------------------------------------------------------------

def _build(listing: SplitListing, folder: Path, void: str, workers: int, progress: bool) -> None:
    kept, dropped = _decode_all(listing, void, workers, progress)
    _write_folder(listing, folder, void, kept, dropped)


def _decode_all(listing: SplitListing, void: str, workers: int, progress: bool) -> tuple[list, list[Dropped]]:
    """Every sample of the listing decoded and cleaned: (kept, dropped with reasons)."""
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
    return kept, dropped


def _write_folder(listing: SplitListing, folder: Path, void: str, kept: list, dropped: list[Dropped]) -> None:
    """Write the cache folder under a temporary name, then rename it into place."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        _writing.add(str(tmp))
        (tmp / OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
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
        (tmp / DROPPED_FILE).write_text(_dropped_text(listing.split, dropped, listing.absent))
        (tmp / "index.json").write_text(json.dumps(index))  # last: its presence marks a complete folder
        (tmp / OWNER_FILE).unlink()
        if folder.exists():  # damaged (discarded above, or by a concurrent prepare) or just finished
            try:
                _verify_quietly(folder, listing.split, void)
                shutil.rmtree(tmp)  # a concurrent prepare finished first: keep its folder
                return
            except _Damaged:
                _discard(folder)
        os.replace(tmp, folder)
    except OSError as exc:
        _remove_temp(tmp)
        if folder.is_dir() and (folder / "index.json").is_file():
            return  # renamed over by a concurrent prepare: its folder is as good as ours
        raise DataError(f"cannot write the prepared cache in {folder.parent}: {os_error_text(exc)} "
                        f"(free some space, or point PETSEG_CACHE or --cache-dir at a writable folder)") from None
    except BaseException:
        _remove_temp(tmp)
        raise
    finally:
        _writing.discard(str(tmp))


def _remove_temp(tmp: Path | None) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


# --- opening and checking --------------------------------------------------------------

class _Damaged(Exception):
    """A prepared folder that does not check out; the message says what is wrong."""


def _open(folder: Path, fp: str, split: str, void: str) -> PreparedSplit:
    """Open and check a prepared folder: the index parses and is consistent, both arrays
    exist with exactly the sizes the index implies. Raises _Damaged otherwise."""
    index, shapes, offsets = _read_index(folder, split, void)
    images = _load_array(folder / "images.npy", int(offsets[-1]) * 3)
    labels = _load_array(folder / "labels.npy", int(offsets[-1]))
    try:
        dropped = [Dropped(*d) for d in index["dropped"]]
    except TypeError:
        raise _Damaged("index.json: malformed list of dropped samples") from None
    return PreparedSplit(
        root=folder, split=index["split"], names=list(index["names"]),
        species=np.asarray(index["species"], dtype=np.int64), shapes=shapes, offsets=offsets,
        images_flat=images, labels_flat=labels, dropped=dropped, absent=list(index["absent"]),
        fingerprint=fp, void=index["void"], layout=index["layout"],
    )


def _verify_quietly(folder: Path, split: str, void: str) -> None:
    _, _, offsets = _read_index(folder, split, void)
    _load_array(folder / "images.npy", int(offsets[-1]) * 3)
    _load_array(folder / "labels.npy", int(offsets[-1]))


def _read_index(folder: Path, split: str, void: str) -> tuple[dict, np.ndarray, np.ndarray]:
    path = folder / "index.json"
    if not path.is_file():
        raise _Damaged("index.json is missing")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _Damaged(f"index.json unreadable: {one_line(exc, 100)}") from None
    if not isinstance(index, dict):
        raise _Damaged("index.json is not an object")
    missing = [k for k in ("version", "split", "void", "layout", "names", "species", "shapes", "dropped", "absent")
               if k not in index]
    if missing:
        raise _Damaged(f"index.json lacks {', '.join(missing)}")
    if index["version"] != CACHE_VERSION:
        raise _Damaged(f"index.json is version {index['version']}, expected {CACHE_VERSION}")
    if index["split"] != split or index["void"] != void:
        raise _Damaged(f"index.json describes {index['split']}/{index['void']}, expected {split}/{void}")
    try:
        shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
        n = len(index["names"])
        if not (len(index["species"]) == len(shapes) == n) or (shapes < 1).any():
            raise ValueError("names, species and shapes disagree")
    except (TypeError, ValueError) as exc:
        raise _Damaged(f"index.json: {one_line(exc, 100)}") from None
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]).astype(np.int64)
    return index, shapes, offsets


def _load_array(path: Path, size: int) -> np.ndarray:
    if not path.is_file():
        raise _Damaged(f"{path.name} is missing")
    try:
        arr = np.load(path, mmap_mode="r") if size else np.load(path)  # an empty array cannot be mapped
    except (OSError, ValueError, EOFError) as exc:
        raise _Damaged(f"{path.name} unreadable: {one_line(exc, 100)}") from None
    if arr.dtype != np.uint8 or arr.ndim != 1 or arr.shape[0] != size:
        raise _Damaged(f"{path.name} holds {arr.dtype} {arr.shape}, expected uint8 ({size},)")
    return arr


# --- leftovers and removal ------------------------------------------------------------

def clean_leftovers(base: Path) -> list[Path]:
    """Remove the temporary folders of prepares that died (killed, crashed, powered off)
    from ``base``: those whose ``owner`` process on this host is gone, and those with no
    owner (or another host's) older than :data:`STALE_AFTER_S`. A folder of a prepare
    still running is left alone. Says how many it removed, in one line."""
    try:
        entries = [e for e in os.scandir(base) if TEMP_DIR.match(e.name)]
    except OSError:
        return []
    removed = []
    host, now = socket.gethostname(), time.time()
    for entry in entries:
        path = Path(entry.path)
        try:
            if _writer_alive(path, host, now):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue  # not ours to remove (permissions) or removed by someone else meanwhile
    if removed:
        _notice(f"removed {len(removed)} temporary folder{'s' if len(removed) != 1 else ''} left in {base} "
                f"by an interrupted prepare")
    return removed


def _writer_alive(path: Path, host: str, now: float) -> bool:
    if str(path) in _writing:
        return True
    try:
        age = now - path.lstat().st_mtime
    except OSError:
        return False
    try:
        pid_text, owner_host = (path / OWNER_FILE).read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        pid, owner_host = None, None
    if pid is not None and owner_host == host:
        return pid != os.getpid() and pid_alive(pid) and age < OWNER_STALE_AFTER_S
    return age < STALE_AFTER_S  # no owner yet (just created), an older version's folder, or another host's


def _discard(folder: Path) -> None:
    """Move a damaged prepared folder out of the way, then delete it."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=".tmp-trash-", dir=folder.parent))
        os.replace(folder, trash / folder.name)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    shutil.rmtree(trash, ignore_errors=True)
