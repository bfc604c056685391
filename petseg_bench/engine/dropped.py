"""The one line ``train``, ``run`` and ``evaluate`` print when the prepared split left
images out, so a result on fewer images than the split lists never goes unnoticed."""

from __future__ import annotations

from typing import Callable

from ..data.cache import PreparedSplit, dropped_summary


def note_dropped(split: PreparedSplit, log: Callable[[str], None]) -> None:
    """``N <split> images dropped (list: PATH)`` through ``log``, when any was."""
    note = dropped_summary(split)
    if note:
        log(note)
