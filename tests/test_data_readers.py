"""Bad input is counted under a named reason, never a crash and never a silent drop."""

from __future__ import annotations

import random
from pathlib import Path

from warc_support import write_responses

from stages.data.config import DataConfig, SourceConfig
from stages.data.funnel import Tally
from stages.data.readers import BLOCK, Shard, open_source
from stages.data.report import build_stats, unreadable_part
from stages.data.samples.real import Page, html_page
from stages.data.samples.warcpack import write_warcs
from stages.data.sources import plan_shards

ARTICLE = html_page("Bridge", ["The council approved the budget for the bridge repairs on Tuesday."] * 3, "Example")


def planted_pages() -> list[Page]:
    latin = html_page("Caf\u00e9", ["Caf\u00e9 owners\u2019 na\u00efve r\u00e9sum\u00e9s."], "Example").encode("cp1252")
    return [
        Page("https://ok.example.com/a", ARTICLE.encode(), "ok"),
        Page("https://ok.example.com/b", ARTICLE.encode(), "ok"),
        Page("https://gone.example.com/", b"<html>Not Found</html>", "http_status", status="404 Not Found"),
        Page("https://empty.example.com/", b"  ", "empty_payload"),
        Page(
            "https://img.example.com/a.png",
            b"\x89PNG\r\n" + bytes(300),
            "non_html",
            content_type="image/png",
            identified="image/png",
        ),
        Page("https://bin.example.com/", b"<html>\x00\x01" + bytes(100), "binary_payload"),
        Page("https://untyped.example.com/", ARTICLE.encode(), "ok", content_type=None, identified=None),
        Page("https://latin.example.com/", latin, "ok", charset="utf-8"),
        Page("https://giant.example.com/", ARTICLE.encode() * 2000, "ok"),
    ]


def read_all(files: list[Path], cap: int = 100_000) -> tuple[list, Tally]:
    source = SourceConfig(name="crawl", kind="warc", paths=[str(f) for f in files])
    tally = Tally()
    docs = list(open_source(Shard(rank=0, source=source, files=tuple(map(str, files))), tally, cap))
    return docs, tally


def test_bad_records_are_counted_by_name(tmp_path: Path):
    pages = planted_pages()
    headerless = Page("https://noheaders.example.com/", b"<html><p>no status line</p></html>", "no_http_headers")
    # three files: the first gets a headerless record, the second ends in junk, the third is cut mid-record
    files = write_warcs(pages, tmp_path, 3, random.Random(0), headerless)
    docs, tally = read_all(files)

    removed = {key.removeprefix(f"{BLOCK}."): n for key, n in tally.removed.items()}
    assert removed == {
        "http_status": 1,
        "empty_payload": 1,
        "non_html": 1,
        "binary_payload": 1,
        "no_http_headers": 1,
        "malformed_record": 1,
        "truncated_file": 1,
    }
    assert sorted(d.metadata["url"] for d in docs) == sorted(p.url for p in pages if p.kind == "ok")
    assert tally.events["capped_pages"] == 1
    assert tally.events["charset_fallback"] + tally.events["charset_detected"] >= 1
    latin = next(d for d in docs if "latin" in d.metadata["url"])
    assert "Caf\u00e9" in latin.text
    # the invariant, at the reader: every record in is either out or removed for a reason
    assert tally.docs[f"{BLOCK}.in"] == tally.docs[f"{BLOCK}.out"] + sum(tally.removed.values())


def test_truncated_gzip_keeps_the_records_before_the_cut(tmp_path: Path):
    pages = [Page(f"https://ok.example.com/{i}", ARTICLE.encode(), "ok") for i in range(5)]
    files = write_warcs(pages, tmp_path, 1, random.Random(1), Page("https://h.example.com/", b"<p>x</p>", "h"))
    docs, tally = read_all(files)
    # one file: headerless record, junk, then a cut record; all earlier pages survive
    assert len(docs) == 5
    assert tally.removed[f"{BLOCK}.malformed_record"] == 1


def test_unreadable_paths_are_counted_and_the_invariant_holds(tmp_path: Path):
    good = write_warcs(
        [Page("https://ok.example.com/", ARTICLE.encode(), "ok")],
        tmp_path,
        2,
        random.Random(2),
        Page("https://h.example.com/", b"<p>x</p>", "h"),
    )
    cfg = DataConfig(
        sources=[{"name": "crawl", "kind": "warc", "paths": [*map(str, good), str(tmp_path / "nope/*.warc.gz")]}]
    )
    shards, problems = plan_shards(cfg, cfg.sources)
    assert [p.path for p in problems] == [str(tmp_path / "nope/*.warc.gz")]
    parts = [unreadable_part(problems, 5)]
    for shard in shards:
        tally = Tally()
        list(open_source(shard, tally, cfg.max_page_bytes))
        parts.append({"tally": tally.to_dict()})
    stats = build_stats([p["tally"] for p in parts], {}, len(shards))
    assert stats["removed"]["read.unreadable_path"] == 1
    assert stats["documents_in"] == stats["documents_out"] + sum(stats["removed"].values())


def test_jsonl_sources_count_empty_texts(tmp_path: Path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": "hello there"}\n{"id": "b", "text": ""}\n{"id": "c", "text": "general"}\n')
    source = SourceConfig(name="mine", kind="jsonl", paths=[str(path)])
    tally = Tally()
    docs = list(open_source(Shard(0, source, (str(path),)), tally, 1000))
    assert [d.id for d in docs] == ["a", "c"] and all(d.metadata["source"] == "mine" for d in docs)
    assert tally.removed == {f"{BLOCK}.empty_payload": 1}


def test_jsonl_invalid_lines_are_counted_not_dropped(tmp_path: Path):
    path = tmp_path / "docs.jsonl.gz"
    import gzip

    with gzip.open(path, "wt") as handle:
        handle.write('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n[1, 2]\n\n{"id": "c", "text": "ok"}\n')
    source = SourceConfig(name="mine", kind="jsonl", paths=[str(path)])
    tally = Tally()
    docs = list(open_source(Shard(0, source, (str(path),)), tally, 1000))
    assert [d.id for d in docs] == ["a", "c"]
    assert tally.removed == {f"{BLOCK}.invalid_json": 2}
    assert tally.docs[f"{BLOCK}.in"] == 4 and tally.docs[f"{BLOCK}.out"] == 2
    assert [s["id"] for s in tally.samples[f"{BLOCK}.invalid_json"]] == ["docs.jsonl.gz:2", "docs.jsonl.gz:3"]


def test_wet_parquet_and_hf_sources(tmp_path: Path):
    import io

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from warcio.warcwriter import WARCWriter

    wet = tmp_path / "crawl.warc.wet.gz"
    with open(wet, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for i, text in enumerate(["Plain text from a WET file.", ""]):
            record = writer.create_warc_record(
                f"https://wet.example.com/{i}",
                "conversion",
                payload=io.BytesIO(text.encode()),
                warc_content_type="text/plain",
            )
            writer.write_record(record)
    pq.write_table(
        pa.table({"text": ["from parquet"], "id": ["p0"], "url": ["https://p.example/"]}), tmp_path / "t.parquet"
    )
    datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(6)], "id": list(map(str, range(6)))}).save_to_disk(
        str(tmp_path / "hf")
    )
    cfg = DataConfig(
        sources=[
            {"name": "wet", "kind": "wet", "paths": [str(wet)]},
            {"name": "pq", "kind": "parquet", "paths": [str(tmp_path / "*.parquet")]},
            {"name": "hub", "kind": "hf", "dataset": str(tmp_path / "hf")},
        ],
        tasks=4,
    )
    shards, problems = plan_shards(cfg, cfg.sources)
    assert problems == [] and [s.source.name for s in shards].count("hub") >= 1
    found: dict[str, list[str]] = {}
    removed = Tally()
    for shard in shards:
        for doc in open_source(shard, removed, cfg.max_page_bytes):
            found.setdefault(doc.metadata["source"], []).append(doc.text)
    assert found["wet"] == ["Plain text from a WET file."]
    assert found["pq"] == ["from parquet"]
    assert sorted(found["hub"]) == [f"row {i}" for i in range(6)]  # each row in exactly one shard
    assert removed.removed == {f"{BLOCK}.empty_payload": 1}


def test_text_that_cannot_be_written_is_removed_by_name(tmp_path: Path):
    """Lone surrogates (JSON escapes, a `unicode_escape` charset) and NUL characters used to pass the
    reader and reach the filters and the writer; duplicated keys and non-UTF-8 lines were reinterpreted."""
    html = [("Content-Type", "text/html")]
    body = ARTICLE.encode()
    warc = write_responses(
        tmp_path / "crawl.warc.gz",
        [
            ("https://ok.example.com/", body, html),
            (
                "https://esc.example.com/",
                b"<html><p>lone \\ud800 here</p></html>",
                [("Content-Type", "text/html; charset=unicode_escape")],
            ),
            ("https://nul.example.com/", body + b" " * 9000 + b"\x00", html),  # past the binary sniff window
        ],
    )
    docs, tally = read_all([warc])
    assert [d.metadata["url"] for d in docs] == ["https://ok.example.com/"]
    assert tally.removed == {f"{BLOCK}.invalid_unicode": 1, f"{BLOCK}.nul_character": 1}

    rows = tmp_path / "docs.jsonl"
    rows.write_bytes(
        b'{"id": "a", "text": "fine"}\n'
        b'{"id": "b", "text": "lone \\ud800"}\n'
        b'{"id": "c\\udfff", "text": "bad id"}\n'
        b'{"id": "d", "text": "nul \\u0000 inside"}\n'
        b'{"id": "e", "text": "first", "text": "second"}\n'
        b'{"id": "f", "text": "caf\xe9"}\n'
    )
    source = SourceConfig(name="mine", kind="jsonl", paths=[str(rows)])
    tally = Tally()
    docs = list(open_source(Shard(0, source, (str(rows),)), tally, 1000))
    assert [d.id for d in docs] == ["a"]
    removed = {key.removeprefix(f"{BLOCK}."): n for key, n in tally.removed.items()}
    assert removed == {"invalid_unicode": 2, "nul_character": 1, "duplicate_key": 1, "invalid_utf8": 1}
    assert tally.docs[f"{BLOCK}.in"] == tally.docs[f"{BLOCK}.out"] + sum(tally.removed.values()) == 6
    assert tally.samples[f"{BLOCK}.invalid_unicode"][0]["text"] == "lone \ufffd"  # samples stay writable


def test_parquet_strings_that_are_not_utf8_are_removed_by_row(tmp_path: Path):
    """Arrow does not check a parquet file's strings: one bad row raised UnicodeDecodeError out of the reader."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = pa.array([b"first page", b"caf\xe9", b"third page"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": texts, "id": ["a", "b", "c"]}), tmp_path / "docs.parquet")
    source = SourceConfig(name="pq", kind="parquet", paths=[str(tmp_path / "docs.parquet")])
    tally = Tally()
    docs = list(open_source(Shard(0, source, (str(tmp_path / "docs.parquet"),)), tally, 1000))
    assert [d.id for d in docs] == ["a", "c"]
    assert tally.removed == {f"{BLOCK}.invalid_utf8": 1}
    assert tally.samples[f"{BLOCK}.invalid_utf8"][0]["id"] == "docs.parquet:1"
