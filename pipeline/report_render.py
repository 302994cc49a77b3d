"""Renders report card sections (`pipeline.report_blocks`) as Markdown and as one self-contained HTML
page (images inline, nothing fetched from elsewhere), through the Jinja templates in templates/."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from pipeline.report_blocks import Section

TEMPLATES = Path(__file__).parent / "templates"
_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"), (re.compile(r"\*([^*]+)\*"), r"<em>\1</em>")]


def md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def inline_html(text: Any) -> Markup:
    """Escaped text with the Markdown spans sections use: `code` and *emphasis*."""
    out = html.escape(str(text), quote=False)
    for pattern, replacement in _INLINE:
        out = pattern.sub(replacement, out)
    return Markup(out)


@cache
def _environment(autoescape: bool) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=StrictUndefined,
    )
    env.filters |= {"md_cell": md_cell, "inline": inline_html, "base64": lambda data: base64.b64encode(data).decode()}
    return env


def to_markdown(title: str, sections: Sequence[Section], images: str) -> str:
    """Markdown whose images are links into the folder `images`, relative to the document."""
    return _environment(False).get_template("report.md.j2").render(title=title, sections=sections, images=images)


def to_html(title: str, sections: Sequence[Section]) -> str:
    return _environment(True).get_template("report.html.j2").render(title=title, sections=sections)
