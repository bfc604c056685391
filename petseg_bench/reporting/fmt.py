"""How numbers appear in the report's tables: one place, so Markdown and HTML agree."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..specs import Figure as PaperFigure

DASH = "—"


def fixed(value: float | None, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal."""
    return DASH if value is None else f"{100 * value:.1f}"


def with_ci(block: Mapping[str, Any]) -> str:
    """``0.620 (0.582–0.658)``: mean Dice with its bootstrap interval where there is one."""
    ci = block.get("mdice_ci95")
    text = fixed(block.get("mdice"))
    if ci and None not in ci:
        text += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return text


def paper_figure(value: PaperFigure, digits: int = 2) -> str:
    """``0.68``, ``0.70–0.71`` for a range, ``—`` where the paper has no figure."""
    if value is None:
        return DASH
    if isinstance(value, tuple):
        return f"{value[0]:.{digits}f}–{value[1]:.{digits}f}"
    return f"{value:.{digits}f}"


def level_ranges(levels: Sequence[int]) -> str:
    """``1–9`` for a run of three or more levels, else the levels listed."""
    levels = sorted(levels)
    if not levels:
        return "none"
    if levels == list(range(levels[0], levels[-1] + 1)) and len(levels) > 2:
        return f"{levels[0]}–{levels[-1]}"
    return ", ".join(str(lv) for lv in levels)


def axis_label(param: str | None, values: Sequence[float | None]) -> str:
    """``std 0..18`` from the parameter name and its per-level values."""
    known = [v for v in values if v is not None]
    name = param or "level"
    if not known:
        return name
    return f"{name} {known[0]:g}..{known[-1]:g}"
