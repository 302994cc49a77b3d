"""Packs pages into CommonCrawl-style WARC.gz files: warcinfo, then request + response per page.

Malformed input is planted at the byte level: a response record without HTTP headers, junk
bytes where a record should start, and a file cut in the middle of its last gzip member.
"""

from __future__ import annotations

import gzip
import io
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from stages.data.samples.real import Page

CRAWL = "CC-SAMPLE-2024-18"
START = datetime(2024, 4, 12, tzinfo=UTC)
USER_AGENT = "CCBot/2.0 (https://commoncrawl.org/faq/)"


class _Clock:
    """Deterministic record ids, dates and IP addresses."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.now = START

    def record_id(self) -> str:
        return f"<urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128), version=4)}>"

    def tick(self) -> str:
        self.now += timedelta(seconds=self.rng.randint(1, 90))
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def ip(self) -> str:
        return ".".join(str(self.rng.randint(1, 254)) for _ in range(4))


def _warcinfo(writer: WARCWriter, clock: _Clock, name: str) -> str:
    info_id = clock.record_id()
    fields = {
        "software": "z2h-samples (warcio)",
        "format": "WARC File Format 1.1",
        "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
        "isPartOf": CRAWL,
        "operator": "zero2hero sample corpus",
        "robots": "checked via crawler-commons",
    }
    record = writer.create_warcinfo_record(name, fields)
    record.rec_headers.replace_header("WARC-Record-ID", info_id)
    record.rec_headers.replace_header("WARC-Date", clock.tick())
    writer.write_record(record)
    return info_id


def _request(writer: WARCWriter, clock: _Clock, page: Page, info_id: str, date: str) -> str:
    parts = urlsplit(page.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    http = StatusAndHeaders(
        f"GET {path} HTTP/1.1",
        [("Host", parts.netloc), ("User-Agent", USER_AGENT), ("Accept", "text/html,application/xhtml+xml;q=0.9")],
        is_http_request=True,
    )
    request_id = clock.record_id()
    headers = {"WARC-Record-ID": request_id, "WARC-Date": date, "WARC-Warcinfo-ID": info_id}
    record = writer.create_warc_record(page.url, "request", http_headers=http, warc_headers_dict=headers)
    writer.write_record(record)
    return request_id


def _response(writer: WARCWriter, clock: _Clock, page: Page, info_id: str) -> None:
    date = clock.tick()
    request_id = _request(writer, clock, page, info_id, date)
    http_date = clock.now.strftime("%a, %d %b %Y %H:%M:%S GMT")
    headers = [("Date", http_date), ("Server", "nginx"), ("Connection", "close")]
    if page.content_type:
        charset = f"; charset={page.charset}" if page.charset else ""
        headers.append(("Content-Type", page.content_type + charset))
    headers.append(("Content-Length", str(len(page.body))))
    warc_headers = {
        "WARC-Record-ID": clock.record_id(),
        "WARC-Date": date,
        "WARC-Concurrent-To": request_id,
        "WARC-IP-Address": clock.ip(),
        "WARC-Warcinfo-ID": info_id,
    }
    if page.identified:
        warc_headers["WARC-Identified-Payload-Type"] = page.identified
    http = StatusAndHeaders(page.status, headers, protocol="HTTP/1.1")
    record = writer.create_warc_record(
        page.url, "response", payload=io.BytesIO(page.body), http_headers=http, warc_headers_dict=warc_headers
    )
    writer.write_record(record)


def headerless_record(clock: _Clock, url: str, body: bytes) -> bytes:
    """A response record whose block has no HTTP status line or headers, as one gzip member."""
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: {clock.record_id()}\r\nWARC-Date: {clock.tick()}\r\n"
        f"WARC-Target-URI: {url}\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + body + b"\r\n\r\n", mtime=0)


def write_warcs(pages: list[Page], out_dir: Path, files: int, rng: random.Random, headerless: Page) -> list[Path]:
    """Round-robin pages over `files` WARC.gz files. The first file also gets the headerless record, the
    second ends with junk bytes, the last is cut in the middle of its final record."""
    clock = _Clock(rng)
    paths = []
    for n in range(files):
        path = out_dir / f"{CRAWL}-{n:05d}.warc.gz"
        with open(path, "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            info_id = _warcinfo(writer, clock, path.name)
            for page in pages[n::files]:
                _response(writer, clock, page, info_id)
            if n == 0:
                handle.write(headerless_record(clock, headerless.url, headerless.body))
            if n == min(1, files - 1):  # junk ends a file: the reader gives up on the rest of that file
                handle.write(b"<html>this is not a WARC record</html>\r\n\r\n")
            last_start = handle.tell()
            if n == files - 1:
                _response(writer, clock, pages[0], info_id)
        if n == files - 1:
            data = path.read_bytes()
            path.write_bytes(data[: last_start + (len(data) - last_start) // 2])
        paths.append(path)
    return paths
