"""One writer per output folder: an exclusive lock on a file inside it.

``run`` locks its run folder and ``train`` its ``OUT/<model>`` folder for as long as they
write there, so two of them started at the same instant cannot mix their results: the
second one stops at once with one line naming the folder. The lock is ``flock`` on
``.petseg-lock`` in the folder: the operating system drops it when the process dies, even
on ``kill -9``, so a killed run never blocks the next one. Taking the lock also removes
the temporary files a killed writer left behind. The same thread may take a lock it
already holds (the ``run`` command holds its folder around the sweep and the report).

A *shared* lock (``shared=True``) is for writers that may work side by side because they
write disjoint files: the shards of one sweep in one folder (``run --shard``, see
:mod:`.shard`). Shared holders exclude every exclusive one (a full ``run``, ``report``)
and the other way round. A shared holder leaves temporary files alone (another shard's,
perhaps on another machine, may be in flight) and never removes the lock file.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..atomic import remove_stale_temp_files
from ..errors import PetsegError, os_error_text, write_error

LOCK_FILE = ".petseg-lock"
#: Sub-folders of a run folder whose stale temporary files a new writer removes.
RUN_FOLDERS = ("", "cells/*", "plots")

_held: dict[tuple[str, int], int] = {}  # (folder, thread) -> depth
_guard = threading.Lock()


@contextmanager
def folder_lock(folder: Path, scan: Sequence[str] = ("",), log: Callable[[str], None] | None = None,
                shared: bool = False) -> Iterator[Path]:
    """Hold the exclusive (or, with ``shared``, the shared) lock of ``folder`` (created if
    needed) inside the ``with``.

    ``scan``: sub-folder patterns (``""`` is the folder itself, ``"cells/*"``...) whose
    stale temporary files are removed once an exclusive lock is taken. A folder this call
    created is removed again if it is still empty when the lock is released."""
    folder = Path(folder)
    key = (str(folder.resolve()), threading.get_ident())
    with _guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if depth:
        try:
            yield folder
        finally:
            with _guard:
                _held[key] -= 1
        return
    created = _missing_ancestors(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc, "to folder") from None
    try:
        fd = _acquire(folder, shared)
    except BaseException:
        _remove_empty(created)
        raise
    with _guard:
        _held[key] = 1
    try:
        removed = [] if shared else remove_stale_temp_files(_scan_dirs(folder, scan), time.time())
        if removed and log is not None:
            log(f"removed {len(removed)} temporary file(s) a killed run left in {folder}")
        yield folder
    finally:
        with _guard:
            _held.pop(key, None)
        _release(folder, fd, created, shared)


def _acquire(folder: Path, shared: bool = False) -> int:
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(folder, exc, "to folder") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise PetsegError(f"{folder} is in use by another petseg-bench process{who}: wait for it to finish, "
                              "or choose another --out") from None
        except OSError as exc:
            os.close(fd)
            raise PetsegError(f"could not lock {folder}: {os_error_text(exc)}") from None
        if _same_file(path, fd):  # not unlinked by the holder that released it meanwhile
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the PID is only shown to a refused writer; the lock holds without it
    return fd


def _release(folder: Path, fd: int, created: list[Path], shared: bool = False) -> None:
    path = folder / LOCK_FILE
    try:
        if not shared and _same_file(path, fd):
            path.unlink()  # while still locked, so nobody can hold a lock on a file we remove
    except OSError:
        pass
    os.close(fd)
    _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for d in created:  # deepest first: only folders this lock made, and only if empty
        try:
            d.rmdir()
        except OSError:
            break


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    out = []
    for d in (folder, *folder.parents):
        if d.exists():
            break
        out.append(d)
    return out


def _scan_dirs(folder: Path, patterns: Sequence[str]) -> list[Path]:
    dirs: list[Path] = []
    for pattern in patterns:
        dirs += [folder] if pattern == "" else [p for p in folder.glob(pattern) if p.is_dir()]
    return dirs
