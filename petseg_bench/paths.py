"""Outputs never overwrite inputs.

Every command with an output calls :func:`refuse_output_over_inputs` before it computes
anything: an output that is, or is inside, something the command reads (a checkpoint,
a run folder, a baseline, the data) is refused in one line. Paths are compared after
resolving symlinks, ``..`` and relative parts, and a hard link to an input counts as
the input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from .errors import PetsegError

#: The files of one training run that sit beside a checkpoint (``OUT/<model>/``).
RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl")


def resolved(path: Path | str) -> Path:
    """``path`` absolute, with symlinks (of the parts that exist) and ``..`` resolved."""
    return Path(os.path.abspath(Path(path).expanduser())).resolve(strict=False)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def clash(out: Path | str, inp: Path | str) -> str | None:
    """``"is"`` when ``out`` is ``inp`` (the same path or the same file), ``"is inside"``
    when it lies under the folder ``inp`` (or where that folder will be), else None."""
    o, i = resolved(out), resolved(inp)
    if o == i or _same_file(o, i):
        return "is"
    if i in o.parents and not i.is_file():  # under a file nothing can be written: check_writable says so
        return "is inside"
    return None


def refuse_output_over_inputs(out: Path | str | None,
                              inputs: Mapping[str, Path | str | None] | Iterable[tuple[str, Path | str | None]],
                              option: str = "--out") -> None:
    """One :class:`PetsegError` line when the output ``out`` is, or is inside, one of
    ``inputs`` (label -> path, or (label, path) pairs; a None path is skipped).
    ``option`` names the output."""
    if out is None:
        return
    for label, path in (inputs.items() if isinstance(inputs, Mapping) else inputs):
        if path is None:
            continue
        how = clash(out, path)
        if how:
            same = "" if resolved(path) == resolved(out) and str(path) == str(out) else f" {path}"
            raise PetsegError(f"{option} {out} {how} the {label}{same}, which this command reads; "
                              f"writing there would destroy it: choose another {option}")


def checkpoint_inputs(checkpoint: Path | str) -> dict[str, Path]:
    """A checkpoint and the files of its training run beside it (best.pt, last.pt,
    metrics.jsonl), as inputs: an output may go beside them, never over them."""
    checkpoint = Path(checkpoint)
    found = {"checkpoint": checkpoint}
    for name in RUN_FILES:
        sibling = checkpoint.parent / name
        if sibling.name != checkpoint.name and sibling.exists():
            found[f"checkpoint {name}"] = sibling
    return found
