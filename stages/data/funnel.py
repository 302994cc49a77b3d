"""Accounting: documents and bytes through every block, removals per named reason.

Every document that enters a task leaves it either kept or under exactly one reason, so
`documents_in == documents_out + sum(removed)` holds by construction and is checked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from datatrove.data import Document

SAMPLE_CHARS = 4000  # removed-document samples are for eyeballing, not for reuse


def doc_bytes(doc: Document) -> int:
    return len(doc.text.encode("utf-8", "replace"))


@dataclass
class Tally:
    """One task's counts. `blocks` keeps the order documents flow through."""

    sample_cap: int = 20
    blocks: list[str] = field(default_factory=list)
    docs: Counter = field(default_factory=Counter)  # "<block>.in" / "<block>.out"
    bytes: Counter = field(default_factory=Counter)
    removed: Counter = field(default_factory=Counter)  # "<block>.<reason>"
    events: Counter = field(default_factory=Counter)  # not removals: capped pages, charset fallbacks
    languages: Counter = field(default_factory=Counter)
    samples: dict[str, list[dict]] = field(default_factory=dict)
    failed_files: dict[str, str] = field(default_factory=dict)  # input path -> "<reason>: <error>"

    def block(self, name: str) -> str:
        if name not in self.blocks:
            self.blocks.append(name)
        return name

    def count(self, point: str, n_bytes: int) -> None:
        self.docs[point] += 1
        self.bytes[point] += n_bytes

    def remove(self, block: str, reason: str, record: dict[str, Any]) -> None:
        key = f"{block}.{reason}"
        self.removed[key] += 1
        kept = self.samples.setdefault(key, [])
        if len(kept) < self.sample_cap:
            text = record.get("text") or ""
            kept.append({**record, "reason": key, "text": text[:SAMPLE_CHARS]})

    def fail_file(self, block: str, reason: str, path: str, error: str) -> None:
        """An input file that could not be read, whole or past some point: one removal, and the file named."""
        self.count(f"{block}.in", 0)
        self.remove(block, reason, {"file": PurePosixPath(path).name, "text": error})
        self.failed_files[path] = f"{reason}: {error}"

    def remove_doc(self, block: str, reason: str, doc: Document) -> None:
        meta = {k: v for k, v in doc.metadata.items() if k != "filter_reason"}
        self.remove(block, reason, {"id": doc.id, "url": meta.pop("url", None), "text": doc.text, "metadata": meta})

    def reconcile(self, block: str, reason: str) -> None:
        """Documents a block dropped without naming why get `reason` (e.g. extraction → no text)."""
        named = sum(n for key, n in self.removed.items() if key.startswith(f"{block}."))
        silent = self.docs[f"{block}.in"] - self.docs[f"{block}.out"] - named
        if silent > 0:
            self.removed[f"{block}.{reason}"] += silent

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "docs": dict(self.docs),
            "bytes": dict(self.bytes),
            "removed": dict(self.removed),
            "events": dict(self.events),
            "languages": dict(self.languages),
            "failed_files": dict(self.failed_files),
        }


def meter(data: Iterator[Document], tally: Tally, point: str) -> Iterator[Document]:
    """Counts documents and UTF-8 bytes passing `point` (lazy, like every datatrove step)."""
    for doc in data:
        tally.count(point, doc_bytes(doc))
        yield doc


class RemovedSampler:
    """Stands in for datatrove's exclusion writer: every dropped document lands here with its
    reason, which is counted; the first few per reason are kept as samples."""

    def __init__(self, tally: Tally, block: str):
        self.tally, self.block = tally, block

    def __enter__(self) -> RemovedSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, doc: Document, rank: int = 0) -> None:
        self.tally.remove_doc(self.block, str(doc.metadata.get("filter_reason") or "filtered"), doc)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-task tallies (as dicts) into one, keeping block order."""
    total: dict[str, Any] = {"blocks": [], "docs": Counter(), "bytes": Counter(), "removed": Counter()}
    total |= {"events": Counter(), "languages": Counter()}
    for part in parts:
        for name in part["blocks"]:
            if name not in total["blocks"]:
                total["blocks"].append(name)
        for key in ("docs", "bytes", "removed", "events", "languages"):
            total[key].update(part[key])
    return total
