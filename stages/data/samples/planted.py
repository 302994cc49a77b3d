"""Planted pages that each filter must catch, built from the real articles so only one flaw differs."""

from __future__ import annotations

import random
import tarfile
from collections.abc import Callable

from datatrove.utils._import_utils import ASSETS_PATH

from stages.data.samples.real import Page, html_page

Article = tuple[str, str, list[str]]  # (id, title, paragraphs)


def blocklisted_domains(count: int, rng: random.Random) -> list[str]:
    """Real entries of the UT1 blocklist that ships inside datatrove."""
    with tarfile.open(f"{ASSETS_PATH}/url_filterblacklistsv0_3_0.tar.gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.rstrip("/").endswith("domains") and m.isfile())
        lines = tar.extractfile(member).read().decode("utf-8", "replace").splitlines()
    domains = sorted({d.strip() for d in lines if d.strip() and not d.startswith("#") and "." in d})
    return rng.sample(domains, min(count, len(domains)))


def blocklisted(article: Article, rng: random.Random, domain: str) -> Page:
    _, title, paragraphs = article
    return Page(
        f"https://{domain}/article/{rng.randrange(10**6)}", html_page(title, paragraphs, domain).encode(), "blocklisted"
    )


def banned_url(article: Article, rng: random.Random) -> Page:
    _, title, paragraphs = article
    word = rng.choice(["porn", "xxx", "sex"])
    return Page(
        f"https://free-{word}-videos.example.net/{rng.randrange(10**6)}",
        html_page(title, paragraphs, "tube").encode(),
        "banned_word",
    )


def boilerplate(article: Article, rng: random.Random) -> Page:
    """A portal page: menus, cookie banner and link lists around one teaser sentence."""
    _, title, paragraphs = article
    links = "".join(f'<li><a href="/section/{i}">Section {i}</a></li>' for i in range(rng.randint(30, 60)))
    html = (
        f"<html><head><title>{title}</title></head><body><div id='cookie'>We use cookies to improve your experience. "
        f"Accept all cookies</div><nav><ul>{links}</ul></nav><div class='teaser'><a href='/a'>{paragraphs[0][:90]}</a>"
        f"</div><ul>{links}</ul><footer>Terms | Privacy | Contact | Subscribe | Sign in</footer></body></html>"
    )
    return Page(f"https://portal{rng.randrange(1000)}.example.com/", html.encode(), "boilerplate")


def spam(article: Article, rng: random.Random) -> Page:
    """Keyword stuffing: the same few lines over and over."""
    _, title, paragraphs = article
    pitch = [
        "Buy cheap replica watches online at the best price today.",
        "Best price replica watches, free shipping, order now and save.",
        f"{title.split()[0]} deals: cheap watches, cheap bags, cheap shoes.",
    ]
    lines = [rng.choice(pitch) for _ in range(rng.randint(40, 80))]
    return Page(
        f"https://cheap-deals{rng.randrange(1000)}.example.org/offer",
        html_page("Cheap watches", lines, "Deals").encode(),
        "spam",
    )


def near_duplicates(article: Article, rng: random.Random, copies: int) -> list[Page]:
    """The same article republished by other sites with small edits (a word swapped, a line added)."""
    doc_id, title, paragraphs = article
    pages = []
    for n in range(copies):
        edited = list(paragraphs)
        i = rng.randrange(len(edited))
        words = edited[i].split()
        if len(words) > 3:
            words[rng.randrange(len(words))] = rng.choice(["reportedly", "also", "now", "then"])
        edited[i] = " ".join(words)
        edited.append(f"This story was first published by our partner site (copy {n + 1}).")
        site = f"syndicate{n}.example.co.uk"
        pages.append(Page(f"https://{site}/news/{doc_id}", html_page(title, edited, site).encode(), "near_duplicate"))
    return pages


def exact_copy(page: Page) -> Page:
    return Page(page.url + "?utm_source=rss&utm_medium=feed", page.body, "exact_duplicate", page.charset)


Maker = Callable[[Article, random.Random], Page]
