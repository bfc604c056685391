"""User-facing errors: the CLI prints these as one line, never as a traceback."""

from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class PetsegError(Exception):
    """A problem with the user's input (a file, an option, a plugin) described in one line."""


class DataError(PetsegError):
    """A data file or folder is missing or unreadable; the message names it."""


class PluginError(PetsegError):
    """A plugin could not be loaded, validated or found."""


class WriteError(PetsegError, OSError):
    """A file could not be written (disk full, read-only folder...); the message names it.
    Also an ``OSError``, so code that catches those keeps working."""


class ModelRunError(PluginError):
    """A model's forward (a plugin's code) raised. Callers that know where it happened (a
    sweep cell, a training epoch) re-raise it with :meth:`at`."""

    def __init__(self, model: str, cause: str, where: str = ""):
        self.model, self.cause, self.where = model, cause, where
        super().__init__(f"model {model} failed{' ' + where if where else ''}: {cause}")

    @classmethod
    def from_exception(cls, model: str, exc: BaseException) -> "ModelRunError":
        return cls(model, failure_text(exc))

    def at(self, where: str) -> "ModelRunError":
        return ModelRunError(self.model, self.cause, where if not self.where else f"{self.where} {where}")


def one_line(exc: BaseException, limit: int = 300, default: str | None = None) -> str:
    """The first line of an exception's message, cut to ``limit`` characters, for
    one-line errors; ``default`` (else the exception's type name) when it has none."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else (default if default is not None else type(exc).__name__)
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: torch's checkpoint writer reports a full disk as "[enforce fail at inline_container.cc:...]
#: ... file write failed" / "unexpected pos": that text means the disk is full.
_TORCH_WRITER = "inline_container.cc"


#: What a plugin's code may raise that becomes one line naming the plugin: any error, and
#: SystemExit (a plugin calling sys.exit must not end a command with its exit code and
#: nothing said). KeyboardInterrupt (Ctrl-C) is the user's: it passes through.
PLUGIN_FAILURES = (Exception, SystemExit)


def failure_text(exc: BaseException) -> str:
    """How a plugin failed, for its one line: ``Type: message``, or ``called sys.exit(CODE)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {one_line(exc)}"


@contextmanager
def plugin_code(what: str) -> Iterator[None]:
    """Runs a plugin's code: its PetsegError passes through, any other failure (SystemExit
    included, on any thread) becomes one :class:`PluginError` line, ``"<what>: <failure>"``."""
    try:
        yield
    except PetsegError:
        raise
    except PLUGIN_FAILURES as exc:  # noqa: BLE001 - a plugin's failure becomes one line naming it
        raise PluginError(f"{what}: {failure_text(exc)}") from None


def call_plugin(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` from a plugin, under :func:`plugin_code`."""
    with plugin_code(what):
        return fn(*args, **kwargs)


def os_error_text(exc: BaseException) -> str:
    """What went wrong with a file operation, in plain words: "no space left on device",
    "permission denied", "read-only file system"..."""
    text = str(exc)
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or _TORCH_WRITER in text:
        return "no space left on device"
    strerror = getattr(exc, "strerror", None)
    if isinstance(exc, OSError) and strerror:
        return strerror[:1].lower() + strerror[1:]
    return one_line(exc, 160)


def write_error(path: Path | str, exc: BaseException, what: str = "") -> WriteError:
    """One line for a failed write of ``path``: ``could not write [what ]PATH: REASON``."""
    reason = os_error_text(exc)
    blocker = _file_in_the_way(Path(path)) if isinstance(exc, (NotADirectoryError, FileExistsError)) else None
    if blocker is not None:
        reason = f"{blocker} is a file, not a folder"
    return WriteError(f"could not write {what + ' ' if what else ''}{path}: {reason}")


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists, when it is not a folder."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None
