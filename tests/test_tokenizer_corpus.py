"""The tokenizer's reading of the data stage's documents: text UTF-8 cannot carry is repaired and
counted, lines that are not strict JSON objects with a string text are counted as bad lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from stages.tokenizer.corpus import CorpusStats, read_documents


def test_documents_are_repaired_or_counted(tmp_path: Path):
    path = tmp_path / "documents" / "00000.jsonl.gz"
    path.parent.mkdir()
    lines = [
        json.dumps({"id": "ok", "text": "plain"}).encode(),
        json.dumps({"id": "nul", "text": "nul\x00byte"}).encode(),
        json.dumps({"id": "lone", "text": "lone \ud800"}).encode(),
        b'{"id": "bytes", "text": "caf\xe9"}',  # not UTF-8: read as a lone surrogate, then repaired
        b'{"id": "twice", "text": "one", "text": "two"}',
        b"[1, 2]",
        b"{broken",
        json.dumps({"id": "empty", "text": "\x00"}).encode(),
    ]
    with gzip.open(path, "wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    stats = CorpusStats()
    documents = dict(read_documents([path], stats))
    assert documents == {"ok": "plain", "nul": "nulbyte", "lone": "lone \ufffd", "bytes": "caf\ufffd"}
    assert (stats.documents, stats.repaired_documents, stats.bad_lines, stats.empty_documents) == (4, 4, 3, 1)
