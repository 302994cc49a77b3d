"""Rows of outside data, one at a time, with unusable rows named and counted rather than raised.

Readers yield `(where, row)`: `row` is the parsed value or a `BadRow` naming why it cannot be used,
`where` (file:line, or dataset[split]:index) locates it in the skip examples. Nothing inside a row
stops a reader; a source that cannot be opened or read at all is a `SourceError` naming it.

JSON is parsed strictly, because a lenient parse silently reinterprets the row:
  invalid_utf8    a line (or a parquet string) that is not UTF-8 (replacement would change its text)
  invalid_json    not JSON, or nested deeper than the parser allows
  duplicate_key   an object giving one key twice (which value was meant is a guess)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RowStream = Iterator[tuple[str, Any]]


@dataclass(frozen=True)
class BadRow:
    reason: str
    detail: str = ""


class SourceError(RuntimeError):
    """A source that cannot be opened or read at all (as opposed to a bad row inside it)."""


class Skips:
    """Per-reason counts of unusable rows with the first few examples: bad input is never silent."""

    def __init__(self, examples_per_reason: int = 3):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._keep = examples_per_reason

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self._keep:
            shown.append(f"{where}: {detail}"[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(sorted(self.counts.items())), "examples": self.examples}


def _object_builder(repeated: list[str]) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """An `object_pairs_hook` that builds dicts and notes every key an object gives twice."""

    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        built = dict(pairs)
        if len(built) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    repeated.append(key)
                seen.add(key)
        return built

    return build


def _duplicate(repeated: list[str]) -> BadRow:
    return BadRow("duplicate_key", f"key {repeated[0]!r} appears more than once in an object")


def parse_json(text: str) -> Any:
    """The JSON value `text` holds, or a BadRow (invalid_json, duplicate_key)."""
    repeated: list[str] = []
    try:
        value = json.loads(text, object_pairs_hook=_object_builder(repeated))
    except json.JSONDecodeError as exc:
        return BadRow("invalid_json", f"{exc.msg}: {text[:80]!r}")
    except (ValueError, RecursionError) as exc:  # numbers past int's digit limit; nesting past the stack
        return BadRow("invalid_json", f"{type(exc).__name__}: {text[:80]!r}")
    return _duplicate(repeated) if repeated else value


def parse_json_at(text: str, position: int) -> tuple[Any, int]:
    """The JSON value starting at `position` (or a BadRow("duplicate_key")) and where it ends.
    Raises ValueError (json.JSONDecodeError) or RecursionError when no value parses there."""
    repeated: list[str] = []
    value, end = json.JSONDecoder(object_pairs_hook=_object_builder(repeated)).raw_decode(text, position)
    return (_duplicate(repeated) if repeated else value), end


def jsonl_values(lines: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    """(line number from 1, value or BadRow) of every non-blank line."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, BadRow("invalid_utf8", f"byte {exc.start} of {raw[:80]!r}")
            continue
        yield number, parse_json(line)


def table_rows(batches: Iterable[Any]) -> Iterator[Any]:
    """The rows of Arrow record batches as plain dicts; a row with a string that is not UTF-8 (Arrow
    does not check what a parquet file holds) is a BadRow("invalid_utf8") instead of ending the file."""
    for batch in batches:
        try:
            yield from batch.to_pylist()
        except UnicodeDecodeError:  # nothing of this batch was yielded yet: go row by row
            for index in range(batch.num_rows):
                try:
                    yield batch.slice(index, 1).to_pylist()[0]
                except UnicodeDecodeError as exc:
                    yield BadRow("invalid_utf8", f"byte {exc.start} of a string: {exc.object[:80]!r}")


def files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """`path` itself, or the files below it whose names end with one of `suffixes`, sorted."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if path.is_file():
        return [path]
    raise SourceError(f"{path}: no such file or folder")


def read_jsonl(path: Path, suffixes: tuple[str, ...] = (".jsonl",)) -> RowStream:
    """Rows of a JSONL file, or of every such file below a folder."""
    for file in files(path, suffixes):
        try:
            with file.open("rb") as lines:
                for number, value in jsonl_values(lines):
                    yield f"{file.name}:{number}", value
        except OSError as exc:
            raise SourceError(f"{file}: cannot be read ({exc})") from exc


def read_hf(dataset: str, split: str, config: str | None = None, data_files: Any = None) -> RowStream:
    """Rows of a Hugging Face dataset: a hub name (online), a local `save_to_disk` folder, or a
    builder such as `json` with `data_files` (offline)."""
    import datasets

    local = Path(dataset)
    if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
        loaded = datasets.load_from_disk(str(local))
        loaded = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        loaded = datasets.load_dataset(dataset, config, split=split, data_files=data_files)
    for index, row in enumerate(loaded):
        yield f"{dataset}[{split}]:{index}", row
