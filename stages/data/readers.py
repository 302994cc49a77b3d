"""Source readers that never crash on bad input and never drop a record silently.

Stock datatrove WarcReader ignores the HTTP status, lets libmagic silently drop records that
lack `WARC-Identified-Payload-Type`, and (with compression="infer") dies on the first
truncated gzip member. Here every record that is not a usable page is counted under a
named reason in the task's `Tally` and the task moves on. Text that cannot be written as it is
(lone surrogates, e.g. from a JSON escape or a `unicode_escape` charset; NUL characters) is
removed as `invalid_unicode` / `nul_character` (`stages.common.text`) before any block sees it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from itertools import islice
from pathlib import PurePosixPath

import fsspec
from datatrove.data import Document
from loguru import logger

from stages.common.rows import BadRow, file_rows, read_errors
from stages.common.text import problem_in, repair
from stages.data.config import SourceConfig
from stages.data.funnel import Tally

BLOCK = "read"
HTML_TYPES = ("text/html", "application/xhtml+xml")
_HTML_SNIFF = re.compile(rb"<(!doctype html|html|head|body|title|p|div|meta)[\s>/]", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_:.-]+)""", re.I)


class TruncatedInput(Exception):
    """A compressed file ends in the middle of a member."""


class _MemberSafe:
    """Hands warcio at most one decompressed chunk per read.

    A plain `GzipFile.read(n)` gathers several chunks and, when a later one fails (junk after a
    member, a cut), raises and loses the chunks it already had: records before the damage vanish.
    """

    def __init__(self, gz: gzip.GzipFile):
        self.gz = gz

    def read(self, size: int = -1) -> bytes:
        try:
            return self.gz.read1(size if size and size > 0 else -1)
        except (EOFError, zlib.error) as exc:  # warcio reads EOFError as a clean end: make the cut visible
            raise TruncatedInput(str(exc)) from exc

    def close(self) -> None:
        self.gz.close()


@dataclass(frozen=True)
class Shard:
    """One task's input: whole files of one source, task `part` of the source's `parts`."""

    rank: int
    source: SourceConfig
    files: tuple[str, ...] = ()
    part: int = 0
    parts: int = 1


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    msg = Message()
    msg["content-type"] = content_type
    return msg.get_param("charset")


def decode_payload(payload: bytes, declared: str | None, tally: Tally) -> str | None:
    """Declared charset, then <meta charset>, then UTF-8, then chardet; None when nothing fits."""
    meta = _META_CHARSET.search(payload[:4096])
    candidates = [declared, meta.group(1).decode("ascii") if meta else None, "utf-8"]
    for i, charset in enumerate(c for c in candidates if c):
        try:
            text = payload.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
        if i:
            tally.events["charset_fallback"] += 1
        return text
    import cchardet

    guess = cchardet.detect(payload).get("encoding")
    if guess:
        try:
            text = payload.decode(guess)
        except (UnicodeDecodeError, LookupError):
            return None
        tally.events["charset_detected"] += 1
        return text
    return None


class WarcSource:
    """Reads WARC (`response` records, HTML) or WET (`conversion` records, plain text) files."""

    def __init__(self, shard: Shard, tally: Tally, max_page_bytes: int, wet: bool = False):
        self.shard, self.tally, self.cap, self.wet = shard, tally, max_page_bytes, wet

    def __iter__(self) -> Iterator[Document]:
        for path in self.shard.files:
            yield from self._read_file(path)

    def _fail(self, reason: str, path: str, error: str) -> None:
        self.tally.fail_file(BLOCK, reason, path, error)

    def _read_file(self, path: str) -> Iterator[Document]:
        from warcio.archiveiterator import ArchiveIterator

        try:
            raw = fsspec.open(path, "rb").open()
        except Exception as exc:  # missing file, no permission, remote error
            logger.warning(f"unreadable input {path}: {exc}")
            self._fail("unreadable_path", path, repr(exc))
            return
        with raw:
            stream = _MemberSafe(gzip.GzipFile(fileobj=raw)) if path.endswith(".gz") else raw
            records = ArchiveIterator(stream)
            while True:
                try:
                    record = next(records)
                    doc = self._process(record, path)
                except StopIteration:
                    return
                except TruncatedInput as exc:
                    logger.warning(f"{path}: truncated after the last complete record ({exc})")
                    self._fail("truncated_file", path, repr(exc))
                    return
                except Exception as exc:  # unparseable bytes: warcio cannot resynchronise inside a file
                    logger.warning(f"{path}: malformed record, skipping the rest of the file ({exc!r})")
                    self._fail("malformed_record", path, repr(exc))
                    return
                if doc is not None:
                    yield doc

    def _process(self, record, path: str) -> Document | None:
        wanted = "conversion" if self.wet else "response"
        if record.rec_type != wanted:
            return None  # warcinfo/request/metadata records are not documents
        headers = record.rec_headers
        url = headers.get_header("WARC-Target-URI")
        payload = record.content_stream().read(self.cap + 1)
        self.tally.count(f"{BLOCK}.in", len(payload))
        where = {"url": url, "file": PurePosixPath(path).name}
        if not self.wet:
            reason = self._http_problem(record)
            if reason:
                self.tally.remove(BLOCK, reason, where)
                return None
        if not payload.strip():
            self.tally.remove(BLOCK, "empty_payload", where)
            return None
        if len(payload) > self.cap:
            payload = payload[: self.cap]
            self.tally.events["capped_pages"] += 1
        if not self.wet and not self._is_html(record, payload):
            self.tally.remove(BLOCK, "non_html", where)
            return None
        if b"\x00" in payload[:8192]:
            self.tally.remove(BLOCK, "binary_payload", where)
            return None
        declared = None if self.wet else _charset(record.http_headers.get_header("Content-Type"))
        text = decode_payload(payload, declared, self.tally)
        if text is None:
            self.tally.remove(BLOCK, "bad_charset", where)
            return None
        bad_text = problem_in((text, url))
        if bad_text:
            self.tally.remove(BLOCK, bad_text, _shown(where | {"text": text}))
            return None
        if not url:
            self.tally.remove(BLOCK, "no_url", {**where, "text": text})
            return None
        doc_id = headers.get_header("WARC-Record-ID") or f"{PurePosixPath(path).name}/{url}"
        metadata = {"url": url, "date": headers.get_header("WARC-Date"), "source": self.shard.source.name}
        doc = Document(text=text, id=doc_id, metadata=metadata)
        self.tally.count(f"{BLOCK}.out", len(payload))
        return doc

    @staticmethod
    def _http_problem(record) -> str | None:
        http = record.http_headers
        status = http.get_statuscode() if http is not None else None
        if not status or not status.isdigit():
            return "no_http_headers"
        return None if status == "200" else "http_status"

    @staticmethod
    def _is_html(record, payload: bytes) -> bool:
        # Trust the crawler's identified type, then the server's, then sniff the bytes (never libmagic,
        # which calls many real pages text/plain).
        identified = record.rec_headers.get_header("WARC-Identified-Payload-Type")
        served = (record.http_headers.get_header("Content-Type") or "").split(";")[0].strip().lower()
        for mime in (identified, served):
            if mime and mime != "application/octet-stream":
                return mime in HTML_TYPES
        return bool(_HTML_SNIFF.search(payload[:4096]))


class TextSource:
    """JSONL, parquet or Arrow files of text rows (a `jsonl`/`parquet` source's files, or an `hf` dataset's
    files of one config and split), read row by row; columnar files one record batch at a time."""

    def __init__(self, shard: Shard, tally: Tally, max_page_bytes: int):
        self.shard, self.tally, self.cap = shard, tally, max_page_bytes
        self.src = shard.source

    def __iter__(self) -> Iterator[Document]:
        for doc in islice(self._rows(), self._share()):
            self.tally.count(f"{BLOCK}.in", len(doc.text.encode("utf-8", "replace")))
            bad_text = problem_in((doc.text, doc.id, doc.metadata.get("url")))
            if bad_text:
                record = {"id": doc.id, "url": doc.metadata.get("url"), "text": doc.text}
                self.tally.remove(BLOCK, bad_text, _shown(record))
                continue
            if not doc.text.strip():
                self.tally.remove(BLOCK, "empty_payload", {"id": doc.id, "url": doc.metadata.get("url")})
                continue
            if len(doc.text) > self.cap:
                doc.text = doc.text[: self.cap]
                self.tally.events["capped_pages"] += 1
            doc.metadata["source"] = self.src.name
            self.tally.count(f"{BLOCK}.out", len(doc.text.encode("utf-8", "replace")))
            yield doc

    def _share(self) -> int | None:
        """This task's part of the source's `limit`: split evenly, the first tasks taking the remainder."""
        limit, part, parts = self.src.limit, self.shard.part, self.shard.parts
        return None if limit is None else limit // parts + (part < limit % parts)

    def _row(self, data: dict, path: str, id_in_file: int) -> Document:
        """A document from one row; a missing or non-string text becomes "" (counted as empty)."""
        text = data.get(self.src.text_key)
        return Document(
            text=text if isinstance(text, str) else "",
            id=str(data.get(self.src.id_key, f"{PurePosixPath(path).name}/{id_in_file}")),
            metadata={"url": data.get(self.src.url_key) or ""},
        )

    def _rows(self) -> Iterator[Document]:
        # Our own loops (strict JSON: stages.common.rows) rather than datatrove's readers: those skip
        # invalid lines and empty texts with at most a log line, and load a parquet file whole; here each
        # bad row is a counted, named removal (invalid_json, invalid_utf8, duplicate_key) and a file that
        # fails, at its start or part-way, is named (Tally.fail_file).
        keep = (self.src.text_key, self.src.id_key, self.src.url_key)
        for path in self.shard.files:
            try:
                for position, data in file_rows(path, keep):
                    if isinstance(data, dict):
                        yield self._row(data, path, position)
                        continue
                    if not isinstance(data, BadRow):
                        data = BadRow("invalid_json", f"a JSON {type(data).__name__}, not an object")
                    self.tally.count(f"{BLOCK}.in", 0)
                    where = f"{PurePosixPath(path).name}:{position}"
                    self.tally.remove(BLOCK, data.reason, {"id": where, "text": data.detail})
            except read_errors() as exc:
                logger.warning(f"unreadable input {path}: {exc!r}")
                self.tally.fail_file(BLOCK, "unreadable_path", path, repr(exc))


def _shown(record: dict) -> dict:
    """A removal sample whose strings can be written: the text that could not, repaired for reading."""
    return {key: repair(value)[0] if isinstance(value, str) else value for key, value in record.items()}


def open_source(shard: Shard, tally: Tally, max_page_bytes: int) -> Iterator[Document]:
    tally.block(BLOCK)
    kind = shard.source.kind
    if kind in ("samples", "warc", "wet"):
        return iter(WarcSource(shard, tally, max_page_bytes, wet=kind == "wet"))
    return iter(TextSource(shard, tally, max_page_bytes))
