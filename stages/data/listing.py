"""CommonCrawl-style listings, and the `take` slice that picks which of a source's files to read.

Each crawl publishes `crawl-data/<crawl>/warc.paths.gz` (and `wet.paths.gz`): one WARC path a line,
relative to the bucket, fetched under `https://data.commoncrawl.org/` or `s3://commoncrawl/`. A source
names the listing (or just the crawl) and a slice of it, so a config says "CC-MAIN-2024-18, every
100th file, 900 files" rather than 900 paths. The listing is read once, when the stage plans its tasks;
the files themselves are opened by the tasks that read them.
"""

from __future__ import annotations

import fsspec

from stages.common.rows import SourceError
from stages.data.config import SourceConfig, TakeConfig


def listing_uri(source: SourceConfig) -> str:
    """The source's listing: as given, or its crawl's `warc.paths.gz` (`wet.paths.gz`) under `base_url`."""
    if source.listing:
        return source.listing
    name = "wet.paths.gz" if source.kind == "wet" else "warc.paths.gz"
    return under(source.base_url, f"crawl-data/{source.crawl}/{name}")


def under(base_url: str, path: str) -> str:
    """`path` of a listing resolved under `base_url` (a URI or a local folder); full URIs stay as they are."""
    return path if "://" in path else f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def listed_files(source: SourceConfig) -> list[str]:
    """Every file the listing names, in its order (compressed by suffix: `.gz`, `.zst`, ...)."""
    uri = listing_uri(source)
    try:
        with fsspec.open(uri, "rt", compression="infer", encoding="utf-8") as handle:
            paths = [line.strip() for line in handle if line.strip()]
    except Exception as exc:  # missing, unreachable, no credentials, not gzip, not text
        raise SourceError(f"listing {uri} cannot be read ({type(exc).__name__}: {exc})") from None
    if not paths:
        raise SourceError(f"listing {uri} names no file")
    return [under(source.base_url, path) for path in paths]


def take(files: list[str], cfg: TakeConfig, what: str) -> list[str]:
    """`files[start::every]`, at most `count` of them; a slice that runs past the files is a SourceError
    naming `what` they came from and how many it has."""
    chosen = files[cfg.start :: cfg.every][: cfg.count]
    if not chosen or (cfg.count is not None and len(chosen) < cfg.count):
        raise SourceError(
            f"{cfg.describe()} reaches past {what}, which has {len(files)} files (the slice gives {len(chosen)})"
        )
    return chosen
