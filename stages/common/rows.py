"""Rows of outside data, one at a time, with unusable rows named and counted rather than raised.

Readers yield `(where, row)`: `row` is the parsed value or a `BadRow` naming why it cannot be used,
`where` (file:line for JSON lines, counted from 1; file:row for Parquet and Arrow, counted from 0)
locates it in the skip examples. Nothing inside a row stops a reader; a source that cannot be opened or
read at all is a `SourceError` naming it. Files may be local or any fsspec URI (`hf://`, `s3://`, ...);
Parquet and Arrow files are read one record batch at a time, so memory stays flat however big the file.

JSON is parsed strictly, because a lenient parse silently reinterprets the row:
  invalid_utf8    a line (or a parquet string) that is not UTF-8 (replacement would change its text)
  invalid_json    not JSON, or nested deeper than the parser allows
  duplicate_key   an object giving one key twice (which value was meant is a guess)
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
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


BATCH_ROWS = 1024  # rows per Arrow record batch: a few MB of web text


def _columnar(uri: str) -> bool:
    return uri.endswith((".parquet", ".arrow"))


def parquet_rows(handle: Any, keep: Collection[str] | None = None) -> Iterator[Any]:
    """Rows of a Parquet file (an open binary file), one record batch in memory at a time; `keep`: read
    only these columns (those the file has)."""
    import pyarrow.parquet as pq

    # pre_buffer (pyarrow's default) reads far ahead of the batch at hand: here it held the whole file
    parquet = pq.ParquetFile(handle, pre_buffer=False)
    names = parquet.schema_arrow.names
    columns = None if keep is None else [name for name in names if name in keep]
    yield from table_rows(parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns))


def arrow_rows(handle: Any) -> Iterator[Any]:
    """Rows of an Arrow IPC stream (the files `datasets` saves and caches), one record batch at a time."""
    import pyarrow as pa

    yield from table_rows(pa.ipc.open_stream(handle))


def file_rows(uri: str, keep: Collection[str] | None = None) -> Iterator[tuple[int, Any]]:
    """(position, value or BadRow) of every row of one data file, by its name: Parquet and Arrow (row
    from 0), else JSON lines (line from 1; `.gz`, `.zst`, `.bz2` decompressed). Raises what opening or
    reading raises (OSError, EOFError, zlib.error, pyarrow's errors)."""
    import fsspec

    with fsspec.open(uri, "rb", compression=None if _columnar(uri) else "infer") as handle:
        if uri.endswith(".parquet"):
            yield from enumerate(parquet_rows(handle, keep))
        elif uri.endswith(".arrow"):
            yield from enumerate(arrow_rows(handle))
        else:
            yield from jsonl_values(handle)


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or unreachable data file raises (pyarrow's errors are ArrowException)."""
    import pyarrow as pa

    return OSError, EOFError, zlib.error, ValueError, pa.ArrowException


def read_files(uris: Sequence[str], keep: Collection[str] | None = None, names: Sequence[str] = ()) -> RowStream:
    """Rows of data files in order (`file_rows`), each `where` naming its file by `names` (default: the
    file's name); a file that cannot be read is a SourceError naming it."""
    for uri, name in zip(uris, names or [PurePosixPath(uri).name for uri in uris], strict=True):
        try:
            for position, value in file_rows(uri, keep):
                yield f"{name}:{position}", value
        except read_errors() as exc:
            raise SourceError(f"{uri}: cannot be read ({type(exc).__name__}: {exc})") from exc


def columns_of(uri: str) -> list[str] | None:
    """The column names of a data file: a Parquet or Arrow schema, or the keys of the first JSON line
    that is an object; None when the file shows none. Reads only the schema or the first lines."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fsspec.open(uri, "rb", compression=None if _columnar(uri) else "infer") as handle:
        if uri.endswith(".parquet"):
            return list(pq.ParquetFile(handle).schema_arrow.names)
        if uri.endswith(".arrow"):
            return list(pa.ipc.open_stream(handle).schema.names)
        for _, value in jsonl_values(handle):
            return list(value) if isinstance(value, dict) else None
    return None


def require_columns(uri: str, wanted: Iterable[str], where: str) -> None:
    """SourceError("<where>: no column 'x' in FILE (columns: ...)") unless the file has every wanted column.
    A file that cannot be read is left to its reader, which names it (or goes on without it)."""
    try:
        names = columns_of(uri)
    except read_errors():
        return
    missing = [column for column in wanted if names is not None and column not in names]
    if missing:
        shown = ", ".join(names or [])
        raise SourceError(f"{where}: no column {missing[0]!r} in {PurePosixPath(uri).name} (columns: {shown})")


def read_jsonl(path: Path, suffixes: tuple[str, ...] = (".jsonl",)) -> RowStream:
    """Rows of a JSONL file, or of every such file below a folder."""
    return read_files([str(file) for file in files(path, suffixes)])


def read_parquet(path: Path) -> RowStream:
    """Rows of a Parquet file, or of every one below a folder."""
    return read_files([str(file) for file in files(path, (".parquet",))])


def read_hf(
    dataset: str, split: str, config: str | None = None, data_files: Any = None, columns: Iterable[str] = ()
) -> RowStream:
    """Rows of one split of a dataset (`stages.common.hub`: a Hub name, a local folder in the Hub layout,
    a `save_to_disk` folder, or a builder such as `json` with `data_files`), streamed file by file. The
    first file must have every one of `columns`: a missing one is a SourceError before any row is read."""
    from stages.common import hub

    found = hub.resolve(dataset, config, split, data_files)
    wanted = list(columns)
    if wanted:
        require_columns(found.files[0], wanted, found.describe())
    return read_files(found.files)
