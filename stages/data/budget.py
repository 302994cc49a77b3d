"""The data stage's budget for `z2h plan`: what each source reads, the text it should keep and the CPU time
of the recipe, from the config alone (nothing is listed or downloaded; local files are measured).

A crawl slice is `take.count` WARC files of CommonCrawl's size, a Hub dataset `limit` rows of FineWeb-Edu's
document size; without them the source's size is unknown until it is read, and the plan says so."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from pipeline.budget import Budget, amount
from stages.common import budget as estimate
from stages.data.config import DataConfig, SourceConfig
from stages.data.sources import expand

CC_PAGE_BYTES = estimate.CC_FILE_BYTES / estimate.CC_PAGES_PER_FILE
CC_KEPT_BYTES_PER_PAGE = estimate.CC_KEPT_TOKENS_PER_FILE * estimate.GPT2_BYTES_PER_TOKEN / estimate.CC_PAGES_PER_FILE
WEB_DOC_BYTES = estimate.WEB_DOC_TOKENS * estimate.GPT2_BYTES_PER_TOKEN


@dataclass(frozen=True)
class Volume:
    """One source: bytes read, text kept, CPU seconds, and how it was sized (for the details line)."""

    read: float
    kept: float
    cpu_s: float
    sized: str


def _local_bytes(source: SourceConfig) -> float | None:
    files, _ = expand(source.model_copy(update={"paths": [p for p in source.paths if "://" not in p]}))
    if not files:
        return None
    return float(sum(Path(fsspec.core.strip_protocol(f)).stat().st_size for f in files))


def _pages(source: SourceConfig, cfg: DataConfig) -> tuple[float, float, str] | None:
    """(pages, bytes read, how) of a page source (samples, warc, wet), or None when its size is unknown."""
    if source.kind == "samples":
        s = cfg.samples
        pages = (s.news_pages + s.bbc_articles + s.wikipedia + s.shakespeare_scenes) * (1 + s.adversarial_fraction)
        return pages, pages * estimate.SAMPLE_PAGE_BYTES, "sample corpus"
    if source.listing or source.crawl:
        if source.take.count is None:
            return None
        files = source.take.count
        pages = files * estimate.CC_PAGES_PER_FILE
        return pages, files * estimate.CC_FILE_BYTES, f"{source.crawl or source.listing} {files} files"
    read = _local_bytes(source)
    return None if read is None else (read / CC_PAGE_BYTES, read, f"{len(source.paths)} path(s)")


def volume(source: SourceConfig, cfg: DataConfig) -> Volume | None:
    """What one source costs; None when its size cannot be known from the config."""
    if source.kind in ("samples", "warc", "wet"):
        found = _pages(source, cfg)
        if found is None:
            return None
        pages, read, sized = found
        per_page = estimate.SAMPLE_KEPT_BYTES_PER_PAGE if source.kind == "samples" else CC_KEPT_BYTES_PER_PAGE
        kept = pages * per_page if source.filters == "all" else read
        cpu = {"all": pages * estimate.RECIPE_CPU_S_PER_PAGE, "dedup-only": kept / 1e6 * estimate.DEDUP_CPU_S_PER_MB}
        return Volume(read, kept, cpu.get(source.filters, 0.0), f"{sized} (~{amount(pages)} pages)")
    if source.kind == "hf":
        if source.limit is None:
            return None
        named = " ".join(part for part in (source.dataset, source.subset) if part)
        read, sized = source.limit * WEB_DOC_BYTES, f"{named} {source.limit:,} rows"
    else:
        local = _local_bytes(source)
        if local is None:
            return None
        read, sized = local, f"{len(source.paths)} path(s)"
    # Text sources: the filters keep at most what is read (an upper bound); dedup is the cost.
    docs = read / WEB_DOC_BYTES
    cpu = {"all": docs * estimate.RECIPE_CPU_S_PER_PAGE, "dedup-only": read / 1e6 * estimate.DEDUP_CPU_S_PER_MB}
    return Volume(read, read, cpu.get(source.filters, 0.0), sized)


def budget(cfg: DataConfig, pipeline: Any, upstream: Mapping[str, Budget]) -> Budget:
    lines, known = [], []
    for source in cfg.sources:
        found = volume(source, cfg)
        if found is None:
            lines.append(f"{source.name}: size unknown until read (set take.count or limit)")
            continue
        known.append(found)
        lines.append(f"{source.name}: {found.sized}, filters {source.filters}")
    if len(known) < len(cfg.sources):
        return Budget(details="; ".join(lines), memory_gb=estimate.DATA_TASK_GB, memory_parts="one data task")
    kept = sum(v.kept for v in known)
    vocab = getattr(pipeline.stages.get("tokenizer"), "vocab_size", None) or estimate.GPT2_VOCAB
    cores = min(cfg.workers * cfg.cpus_per_worker, cfg.tasks)
    return Budget(
        details="; ".join(lines) + f"; keeps ~{amount(kept, 'B')} of text; {cores:g} cores",
        data_bytes=sum(v.read for v in known),
        tokens=kept / estimate.bytes_per_token(vocab),
        memory_gb=estimate.DATA_TASK_GB,
        memory_parts="one data task: filter blocks and the extraction sandbox",
        seconds=estimate.cpu_seconds(sum(v.cpu_s for v in known), cores),
        output={"text_bytes": kept},
    )
