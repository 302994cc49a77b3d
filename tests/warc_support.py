"""WARC response records written with warcio, one page at a time, for the data reader tests."""

from __future__ import annotations

import io
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter


def write_responses(path: Path, pages: list[tuple[str, bytes, list[tuple[str, str]]]], gzip: bool = True) -> Path:
    """One `response` record per (url, body, HTTP headers) page, status 200."""
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=gzip)
        for url, body, headers in pages:
            http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
            writer.write_record(record)
    return path
