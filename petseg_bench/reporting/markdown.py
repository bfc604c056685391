"""The report as GitHub Markdown (tables by tabulate)."""

from __future__ import annotations

from typing import Sequence

from .document import Section, Table


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for block in sec.blocks:
            lines += _block(block)
    return "\n".join(lines).rstrip() + "\n"


def _block(block) -> list[str]:
    if block.kind == "paragraph":
        return [block.text, ""]
    if block.kind == "callout":
        return [f"> **{'Warning' if block.level == 'warning' else 'Note'}:** {block.text}", ""]
    if block.kind == "table":
        return _table(block)
    if block.kind == "gallery":
        return [line for fig in block.figures for line in (f"![{fig.caption}]({fig.path})", "")]
    return []


def _table(table: Table) -> list[str]:
    from tabulate import tabulate

    lines = [f"*{table.caption}*", ""] if table.caption else []
    align = ["left"] * table.text_columns + ["right"] * (len(table.headers) - table.text_columns)
    # disable_numparse: cells are already formatted text ("0.70–0.71", "—"), never re-parsed
    lines += [tabulate(table.rows, headers=table.md_headers or table.headers, tablefmt="github",
                       colalign=align, disable_numparse=True), ""]
    return lines
