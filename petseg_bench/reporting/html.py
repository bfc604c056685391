"""The report as one HTML page (the Jinja2 template ``templates/report.html.j2``)."""

from __future__ import annotations

from typing import Sequence

from ..run_record import RunRecord
from .document import Section

TEMPLATE = "report.html.j2"


def render_html(title: str, sections: Sequence[Section], run: RunRecord) -> str:
    import jinja2

    # Autoescape on and StrictUndefined: every value is text, and a missing one fails loudly.
    env = jinja2.Environment(loader=jinja2.PackageLoader("petseg_bench.reporting", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(title=title, sections=sections, run=run)
