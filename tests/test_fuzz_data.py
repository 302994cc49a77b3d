"""The data stage's readers under arbitrary input: WARC records with any headers and payloads, gzip
members cut or followed by junk, files of random bytes, and JSONL/parquet text rows of any shape.
Nothing raises out of a reader, every record ends up out or removed under a reason (the funnel's
in = out + removed), and every document that comes out is text that can be written."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fuzz_strategies import ANY_TEXT, PARQUET_STRING, TEXT_ROW, WORDS, jsonl_lines, unchecked_table
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.common.text import problem_in
from stages.data.config import SourceConfig
from stages.data.funnel import Tally
from stages.data.readers import BLOCK, Shard, open_source

FUZZ = settings(max_examples=60, deadline=None)
HEADER_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
CONTENT_TYPES = (
    st.sampled_from(
        [
            b"text/html",
            b"text/html; charset=utf-8",
            b"text/html; charset=unicode_escape",
            b"text/html; charset=utf-16",
            b"text/html; charset=nonsense",
            b"text/plain",
            b"image/png",
        ]
    )
    | HEADER_LINE
)
PAYLOADS = (
    st.binary(max_size=300)
    | st.sampled_from([b"<html><p>lone \\ud800</p></html>", b"<html><p>caf\xe9 ok</p></html>", b"<p>\x00</p>", b"  "])
    | st.builds(lambda t: f"<html><body><p>{t}</p></body></html>".encode("utf-8", "surrogatepass"), WORDS)
)
PAGE = st.fixed_dictionaries(  # a well-formed page: its text is what varies
    {
        "kind": st.just(b"response"),
        "url": st.just(b"https://a.example/"),
        "warc_headers": st.just([]),
        "status": st.just(b"200 OK"),
        "http_headers": st.just([]),
        "content_type": st.sampled_from(
            [b"text/html", b"text/html; charset=utf-8", b"text/html; charset=unicode_escape"]
        ),
        "payload": st.builds(
            lambda t, codec: f"<html><body><p>{t}</p></body></html>".encode(codec, "surrogatepass"),
            WORDS | ANY_TEXT,
            st.sampled_from(["utf-8", "unicode_escape"]),  # a unicode_escape charset turns \\ud800 into a surrogate
        ),
        "length_error": st.just(0),
    }
)
RECORD = PAGE | st.fixed_dictionaries(
    {
        "kind": st.sampled_from([b"response", b"response", b"conversion", b"metadata"]) | HEADER_LINE,
        "url": st.sampled_from([b"https://a.example/", b"", b"http://b.example/x?y"]) | HEADER_LINE,
        "warc_headers": st.lists(HEADER_LINE, max_size=2),
        "status": st.sampled_from([b"200 OK", b"404 Not Found", b"200", b"abc"]) | HEADER_LINE,
        "http_headers": st.lists(HEADER_LINE, max_size=3),
        "content_type": CONTENT_TYPES,
        "payload": PAYLOADS,
        "length_error": st.sampled_from([0, 0, 0, -5, 7]),
    }
)


def _member(record: dict) -> bytes:
    """One WARC record, header lines as given (any bytes), as its own gzip member (as crawls write them)."""
    block = record["payload"]
    if record["kind"] == b"response":
        http = [b"HTTP/1.1 " + record["status"], b"Content-Type: " + record["content_type"], *record["http_headers"]]
        block = b"\r\n".join(http) + b"\r\n\r\n" + block
    lines = [
        b"WARC/1.0",
        b"WARC-Type: " + record["kind"],
        b"WARC-Target-URI: " + record["url"],
        b"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000000>",
        b"Content-Type: application/http; msgtype=response",
        *record["warc_headers"],
        b"Content-Length: %d" % max(len(block) + record["length_error"], 0),
    ]
    return gzip.compress(b"\r\n".join(lines) + b"\r\n\r\n" + block + b"\r\n\r\n")


def _damage(data: bytes, how: str, at: float, junk: bytes) -> bytes:
    cut = int(len(data) * at)
    return {"none": data, "cut": data[:cut], "junk": data[:cut] + junk + data[cut:], "tail": data + junk}[how]


def _read(kind: str, path: Path) -> tuple[list, Tally]:
    source = SourceConfig(name="fuzz", kind=kind, paths=[str(path)])
    tally = Tally()
    docs = list(open_source(Shard(0, source, (str(path),)), tally, 1000))
    return docs, tally


def _check(docs: list, tally: Tally) -> None:
    assert tally.docs[f"{BLOCK}.in"] == tally.docs[f"{BLOCK}.out"] + sum(tally.removed.values()) >= len(docs)
    assert tally.docs[f"{BLOCK}.out"] == len(docs)
    for doc in docs:
        assert problem_in([doc.text, doc.id, doc.metadata.get("url")]) is None and doc.text.strip()


@FUZZ
@given(
    st.lists(RECORD, max_size=5),
    st.sampled_from(["none", "cut", "junk", "tail"]),
    st.floats(0, 1),
    st.binary(max_size=40),
    st.sampled_from(["warc", "wet"]),
)
def test_warc_records_of_any_shape_are_read_or_removed(records, how, at, junk, kind):
    data = _damage(b"".join(_member(r) for r in records), how, at, junk)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crawl.warc.gz"
        path.write_bytes(data)
        docs, tally = _read(kind, path)
    _check(docs, tally)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["crawl.warc.gz", "crawl.warc"]))
def test_files_of_random_bytes_are_removed_not_raised(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        docs, tally = _read("warc", path)
    _check(docs, tally)


@FUZZ
@given(jsonl_lines(TEXT_ROW), st.booleans())
def test_jsonl_text_rows_are_kept_or_removed(lines, compressed):
    body = b"".join(line + b"\n" for line in lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("docs.jsonl.gz" if compressed else "docs.jsonl")
        path.write_bytes(gzip.compress(body) if compressed else body)
        docs, tally = _read("jsonl", path)
    _check(docs, tally)
    assert tally.docs[f"{BLOCK}.in"] == sum(1 for line in lines if line.strip())


@FUZZ
@given(st.lists(st.fixed_dictionaries(dict.fromkeys(("text", "id", "url"), PARQUET_STRING)), min_size=1, max_size=6))
def test_parquet_text_rows_are_kept_or_removed(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.parquet"
        table = unchecked_table(rows, pa.schema([("text", pa.string()), ("id", pa.string()), ("url", pa.string())]))
        pq.write_table(table, path)
        docs, tally = _read("parquet", path)
    _check(docs, tally)
    assert tally.docs[f"{BLOCK}.in"] == len(rows)
