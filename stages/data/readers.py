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
from pathlib import PurePosixPath

import fsspec
from datatrove.data import Document
from loguru import logger

from stages.common.rows import BadRow, jsonl_values, table_rows
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
    """One task's input: some files of one source, or one part of a dataset."""

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
    """JSONL / parquet files (datatrove readers) or a Hugging Face dataset part."""

    def __init__(self, shard: Shard, tally: Tally, max_page_bytes: int):
        self.shard, self.tally, self.cap = shard, tally, max_page_bytes
        self.src = shard.source

    def __iter__(self) -> Iterator[Document]:
        rows = {"hf": self._hf_rows, "jsonl": self._jsonl_rows}.get(self.src.kind, self._parquet_rows)
        for doc in rows():
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

    def _unreadable(self, path: str, exc: Exception) -> None:
        logger.warning(f"unreadable input {path}: {exc!r}")
        self.tally.fail_file(BLOCK, "unreadable_path", path, repr(exc))

    def _bad_row(self, path: str, where: int, bad: BadRow) -> None:
        self.tally.count(f"{BLOCK}.in", 0)
        self.tally.remove(BLOCK, bad.reason, {"id": f"{PurePosixPath(path).name}:{where}", "text": bad.detail})

    def _row(self, data: dict, path: str, id_in_file: int | str) -> Document:
        """A document from one row; a missing or non-string text becomes "" (counted as empty)."""
        text = data.get(self.src.text_key)
        return Document(
            text=text if isinstance(text, str) else "",
            id=str(data.get(self.src.id_key, f"{PurePosixPath(path).name}/{id_in_file}")),
            metadata={"url": data.get(self.src.url_key) or ""},
        )

    def _jsonl_rows(self) -> Iterator[Document]:
        # Our own line loop (strict JSON: stages.common.rows) rather than datatrove's JsonlReader: that
        # one skips invalid lines and empty texts with at most a log line; here each becomes a counted,
        # named removal (invalid_json, invalid_utf8, duplicate_key).
        for path in self.shard.files:
            try:
                with fsspec.open(path, "rb", compression="infer") as handle:
                    for number, data in jsonl_values(handle):
                        if isinstance(data, dict):
                            yield self._row(data, path, number - 1)
                            continue
                        if not isinstance(data, BadRow):
                            data = BadRow("invalid_json", f"a JSON {type(data).__name__}, not an object")
                        self._bad_row(path, number, data)
            except (OSError, EOFError, zlib.error) as exc:
                self._unreadable(path, exc)

    def _parquet_rows(self) -> Iterator[Document]:
        import pyarrow.parquet as pq

        for path in self.shard.files:
            try:
                with fsspec.open(path, "rb") as handle:
                    table = pq.read_table(handle)
            except Exception as exc:  # pyarrow raises its own error types for damaged files
                self._unreadable(path, exc)
                continue
            for number, data in enumerate(table_rows(table.to_batches())):
                if isinstance(data, BadRow):
                    self._bad_row(path, number, data)
                    continue
                yield self._row(data, path, number)

    def _hf_rows(self) -> Iterator[Document]:
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(self._hf_dataset(), rank=self.shard.part, world_size=self.shard.parts)
        for i, row in enumerate(dataset):
            yield self._row(row, self.src.dataset or "hf", f"{self.shard.part}/{i}")

    def _hf_dataset(self):
        import datasets

        path = self.src.dataset or ""
        fs, root = fsspec.core.url_to_fs(path)
        if fs.exists(f"{root}/dataset_info.json") or fs.exists(f"{root}/state.json"):
            loaded = datasets.load_from_disk(path)
            loaded = loaded[self.src.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            dataset = loaded.to_iterable_dataset()
        else:
            dataset = datasets.load_dataset(path, self.src.subset, split=self.src.split, streaming=True)
        return dataset.take(self.src.limit) if self.src.limit else dataset


def _shown(record: dict) -> dict:
    """A removal sample whose strings can be written: the text that could not, repaired for reading."""
    return {key: repair(value)[0] if isinstance(value, str) else value for key, value in record.items()}


def open_source(shard: Shard, tally: Tally, max_page_bytes: int) -> Iterator[Document]:
    tally.block(BLOCK)
    kind = shard.source.kind
    if kind in ("samples", "warc", "wet"):
        return iter(WarcSource(shard, tally, max_page_bytes, wet=kind == "wet"))
    return iter(TextSource(shard, tally, max_page_bytes))
