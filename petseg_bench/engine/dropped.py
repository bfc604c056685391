"""The one line ``train``, ``run`` and ``evaluate`` print when the prepared split left
images out, so a result on fewer images than the split lists never goes unnoticed."""

from __future__ import annotations

from typing import Callable

from ..data.cache import PreparedSplit, dropped_summary


def note_dropped(split: PreparedSplit, log: Callable[[str], None]) -> None:
    """``N <split> images dropped (list: PATH)`` through ``log``, when any was, and a
    warning per name listed twice."""
    note = dropped_summary(split)
    if note:
        log(note)
    for line in split.duplicates:  # counted once, but the list is wrong: say where
        log(f"warning: {line}")
