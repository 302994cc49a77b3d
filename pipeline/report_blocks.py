"""The report card's document model: sections made of text, tables, images and code, and the number
formats every section uses. Stages build their own section from these (`Stage.report`);
`pipeline.report_render` turns a list of sections into Markdown and HTML."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Text:
    kind: ClassVar[str] = "text"
    text: str  # one paragraph; `code` spans and *emphasis* allowed


@dataclass
class Table:
    kind: ClassVar[str] = "table"
    columns: list[str]
    rows: list[list[Any]]

    def numeric(self) -> list[bool]:
        """Columns whose every cell reads as a number (right-aligned)."""
        return [
            bool(self.rows) and all(_NUMBER.match(str(row[i])) for row in self.rows if i < len(row))
            for i in range(len(self.columns))
        ]


_NUMBER = re.compile(r"^(–|[-+]?[\d,]*\.?\d+(e[-+]?\d+)?( ?(%|[KMGT]?B))?)$")


@dataclass
class Image:
    kind: ClassVar[str] = "image"
    name: str  # file name under the report's images/ folder
    png: bytes
    caption: str


@dataclass
class Code:
    kind: ClassVar[str] = "code"
    text: str
    summary: str = ""  # collapsed in HTML under this summary when given


Block = Text | Table | Image | Code


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def not_run(title: str, why: str) -> Section:
    """A section with nothing to show says so in one line."""
    return Section(title, [Text(f"Not run: {why}.")])


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def fmt_seconds(s: float | None) -> str:
    return "–" if s is None else f"{s:,.1f}"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"
