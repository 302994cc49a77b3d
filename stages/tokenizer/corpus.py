"""Reading the data stage's documents: cleaning, skipping bad lines, the validation split, the training sample."""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.common.rows import BadRow, parse_json
from stages.common.text import repair

log = logging.getLogger(__name__)


class CorpusError(ValueError):
    """No usable documents: nothing to train on or to shard."""


@dataclass
class CorpusStats:
    files: int = 0
    documents: int = 0
    bad_lines: int = 0  # not strict JSON (a repeated key too), or no string "text"
    empty_documents: int = 0  # nothing left after cleaning
    repaired_documents: int = 0  # NUL characters dropped or lone surrogates replaced
    truncated_files: int = 0  # gzip cut short: the documents before the cut are kept

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def document_files(data_dir: Path) -> list[Path]:
    files = sorted((data_dir / "documents").glob("*.jsonl.gz"))
    if not files:
        raise CorpusError(f"no documents/*.jsonl.gz in the data stage output {data_dir}")
    return files


def read_documents(files: list[Path], stats: CorpusStats) -> Iterator[tuple[str, str]]:
    """(id, text) of every usable document, in file order; skips are counted in `stats`."""
    for path in files:
        stats.files += 1
        try:
            with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as lines:
                for number, line in enumerate(lines):
                    document = _parse(line, stats)
                    if document is not None:
                        doc_id = str(document.get("id") or f"{path.name}:{number}")
                        yield doc_id, document["text"]
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            stats.truncated_files += 1
            log.warning("%s: %s; kept the documents before the damage", path.name, exc)


def _parse(line: str, stats: CorpusStats) -> dict | None:
    document = parse_json(line)
    if isinstance(document, BadRow) or not isinstance(document, dict) or not isinstance(document.get("text"), str):
        stats.bad_lines += 1
        return None
    text, repaired = repair(document["text"])
    stats.repaired_documents += repaired
    if not text:
        stats.empty_documents += 1
        return None
    stats.documents += 1
    document["text"] = text
    return document


def is_val(doc_id: str, seed: int, fraction: float) -> bool:
    """Held out by a hash of (seed, id): stable across runs, task counts and file layouts."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def training_sample(files: list[Path], seed: int, val_fraction: float, max_chars: int, doc_max_chars: int) -> list[str]:
    """The first `max_chars` characters of training-split documents, at most `doc_max_chars` from each."""
    sample: list[str] = []
    total = 0
    for doc_id, text in read_documents(files, CorpusStats()):
        if is_val(doc_id, seed, val_fraction):
            continue
        piece = text[: min(doc_max_chars, max_chars - total)]
        sample.append(piece)
        total += len(piece)
        if total >= max_chars:
            break
    if not sample:
        raise CorpusError(f"no training text in {len(files)} document file(s): every document was empty or held out")
    return sample
