"""Atomic writes: a reader never sees a half-written result.

Every write goes to ``.NAME.tmp-PID`` beside the target and is renamed over it. A
failed write (disk full, read-only folder) raises one line naming the file and leaves
the previous file as it was; a killed writer's temporary file is removed by the next
run that takes the folder's lock (:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from .errors import PetsegError, write_error

#: ``.NAME.tmp-PID``: the temporary files of this module and of the checkpoint writer.
TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")
#: A temporary file whose writer is still alive but that predates the lock by more than
#: this is a leftover too (its writer's PID was reused): no write takes that long.
STALE_AFTER_S = 60.0


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        _unlink_quietly(tmp)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def _unlink_quietly(path: Path) -> None:
    try:
        if path.exists():
            path.unlink()
    except OSError:
        pass


def check_writable(path: Path) -> None:
    """Fail early, in one line, when ``path`` (a file to be written later) cannot be
    written: a file where a folder should be, a folder where the file should be, or a
    folder this user may not write to."""
    path = Path(path)
    if path.is_dir():
        raise PetsegError(f"could not write {path}: it is a folder, not a file")
    for parent in path.parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise PetsegError(f"could not write {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PetsegError(f"could not write {path}: permission denied ({parent} is not writable)")
        return


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or an absurd number): leave its file alone
    return True


def remove_stale_temp_files(folders: Iterable[Path], locked_at: float) -> list[Path]:
    """Remove the temporary files killed writers left in ``folders`` (not below them):
    those whose PID is not running, is ours (a previous process with our PID), or that
    predate ``locked_at`` by more than :data:`STALE_AFTER_S`. Returns what was removed."""
    removed = []
    for folder in folders:
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        for p in entries:
            m = TEMP_FILE.match(p.name)
            if not m or not p.is_file():
                continue
            pid = int(m.group(1))
            try:
                stale = (pid == os.getpid() or not pid_alive(pid)
                         or p.stat().st_mtime < locked_at - STALE_AFTER_S)
                if stale:
                    p.unlink()
                    removed.append(p)
            except OSError:
                continue
    return removed
