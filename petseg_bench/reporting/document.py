"""The report's content as plain data, rendered alike by :mod:`.markdown` and :mod:`.html`.

Every block carries a ``kind`` so the Jinja template can dispatch on it without Python
type checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    groups: list[tuple[str, int]] = field(default_factory=list)  # HTML header row above `headers`
    md_headers: list[str] | None = None  # Markdown has no grouped headers: fuller names
    text_columns: int = 1  # leading columns that are text (left-aligned); the rest are numbers
    kind: str = "table"


@dataclass
class Paragraph:
    text: str
    kind: str = "paragraph"


@dataclass
class Callout:
    text: str
    level: str = "warning"  # warning | note
    kind: str = "callout"


@dataclass
class Figure:
    path: str  # relative to the run folder, so the report folder can move as a whole
    caption: str
    kind: str = "figure"


@dataclass
class Gallery:
    figures: list[Figure]
    layout: str = "grid"  # grid (plots) | strips (full width)
    kind: str = "gallery"


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any]
