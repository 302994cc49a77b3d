"""One split of a dataset laid out as a Hugging Face Hub repository, read from the Hub or from a local
folder with the same layout (offline): the same matching runs over both file listings.

A source is a Hub id (`allenai/ai2_arc`: listed with huggingface_hub's `list_repo_files`, each file
fetched into the HF cache with `hf_hub_download`) or a local folder (with `mirror`, a Hub id is read
from `<mirror>/<owner>/<name>`). Data files are Parquet (read in record batches) or JSONL; for
config C and split S the layouts recognised are

  C/S-00000-of-00001.parquet   C/S.jsonl   a config folder (allenai/ai2_arc, cais/mmlu, allenai/winogrande)
  C/S/0000.parquet                         the Hub's parquet export (revision refs/convert/parquet)
  data/S-00000-of-00001.parquet   S.jsonl  the default config (Rowan/hellaswag): C is `default`

A repository with one config needs no config name. A Hub repository whose branch holds only a loading
script (which `datasets` no longer runs) is read from its parquet export, `refs/convert/parquet`.
Anything missing (the repository, a revision, config, split or column) is a `SourceError` naming the
source, the key and what exists instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stages.common.rows import RowStream, SourceError, jsonl_values, table_rows

DATA_SUFFIXES = (".parquet", ".jsonl")
DEFAULT_CONFIG = "default"
PARQUET_EXPORT = "refs/convert/parquet"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}(-[0-9a-f]+)?$")  # push_to_hub's shard names
BATCH_ROWS = 1024


def _split_name(filename: str) -> str:
    stem = filename.rsplit(".", 1)[0]
    shard = SHARD.match(stem)
    return shard.group("split") if shard else stem


def layout(paths: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """(config, split) -> its data files, sorted, for every data file of a repository listing."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        parts = path.split("/")
        if not path.endswith(DATA_SUFFIXES) or len(parts) > 3:
            continue
        if len(parts) == 3:  # the parquet export: config/split/0000.parquet
            key = (parts[0], parts[1])
        elif len(parts) == 2:
            key = (DEFAULT_CONFIG if parts[0] == "data" else parts[0], _split_name(parts[1]))
        else:
            key = (DEFAULT_CONFIG, _split_name(parts[0]))
        found.setdefault(key, []).append(path)
    return {key: sorted(files) for key, files in found.items()}


@dataclass(frozen=True)
class Source:
    """Where a dataset lives: `folder` for a local copy, else the Hub repository `name` at `revision`."""

    name: str  # as configured: a Hub id or a folder
    folder: Path | None
    revision: str | None = None

    @classmethod
    def of(cls, name: str, revision: str | None = None, mirror: Path | None = None) -> Source:
        local = Path(name).expanduser()
        if local.is_dir():
            return cls(name, local.absolute(), revision)
        if not HUB_ID.match(name):
            raise SourceError(f"{name}: no such folder, and not a Hub dataset id (owner/name)")
        if mirror is not None:
            copy = mirror.expanduser().absolute() / name
            if not copy.is_dir():
                raise SourceError(f"{name}: the mirror has no copy at {copy}")
            return cls(name, copy, revision)
        return cls(name, None, revision)

    def describe(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return f"https://huggingface.co/datasets/{self.name}" + (f"@{self.revision}" if self.revision else "")

    def listing(self) -> tuple[list[str], str | None]:
        """Paths of the repository's files (relative, `/`-separated) and the revision they are at."""
        if self.folder is not None:
            return [p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file()], None
        paths = self._hub_files(self.revision)
        if self.revision is None and not layout(paths) and any(p.endswith(".py") for p in paths):
            return self._hub_files(PARQUET_EXPORT), PARQUET_EXPORT  # a script repository: its parquet export
        return paths, self.revision

    def _hub_files(self, revision: str | None) -> list[str]:
        from huggingface_hub import HfApi

        try:
            return HfApi().list_repo_files(self.name, repo_type="dataset", revision=revision)
        except Exception as exc:  # not found, gated, offline, HTTP errors: each means it cannot be listed
            at = f" at revision {revision!r}" if revision else ""
            raise SourceError(f"{self.name}: cannot list the Hub dataset{at} ({_first_line(exc)})") from None

    def fetch(self, path: str, revision: str | None) -> Path:
        """A local file for listed `path` (downloaded into the HF cache for a Hub source)."""
        if self.folder is not None:
            return self.folder / path
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.name, path, repo_type="dataset", revision=revision))
        except Exception as exc:  # as for the listing
            raise SourceError(f"{self.name}: cannot download {path} ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class SplitFiles:
    """The data files of one config's split, chosen from a source's listing."""

    source: Source
    config: str
    split: str
    revision: str | None
    paths: tuple[str, ...]

    def label(self) -> str:
        return f"{self.source.name} [{self.config}] {self.split}"

    def rows(self, columns: Iterable[str] = ()) -> RowStream:
        """(`file:row`, row) of every row in file order (row numbers from 0 for Parquet, 1 for JSONL
        lines); a Parquet file without one of `columns` is refused before any row is read."""
        wanted = list(columns)
        for path in self.paths:
            local = self.source.fetch(path, self.revision)
            if path.endswith(".parquet"):
                yield from _parquet_rows(local, path, wanted, self.label())
            else:
                yield from _jsonl_rows(local, path)


def _parquet_rows(local: Path, path: str, columns: list[str], label: str) -> RowStream:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(local)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"{label}: {path} is not a readable Parquet file ({exc})") from None
    names = handle.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise SourceError(f"{label}: {path} has no column {missing[0]!r} (columns: {', '.join(names)})")
    for index, row in enumerate(table_rows(handle.iter_batches(batch_size=BATCH_ROWS))):
        yield f"{path}:{index}", row


def _jsonl_rows(local: Path, path: str) -> Iterator[tuple[str, object]]:
    try:
        with local.open("rb") as lines:
            for number, value in jsonl_values(lines):
                yield f"{path}:{number}", value
    except OSError as exc:
        raise SourceError(f"{local}: cannot be read ({exc})") from None


def split_files(source: Source, config: str | None, split: str) -> SplitFiles:
    """The files of `config`'s `split` (the repository's only config when `config` is None)."""
    paths, revision = source.listing()
    found = layout(paths)
    where = source.describe() + (f" (revision {revision})" if revision and revision != source.revision else "")
    if not found:
        raise SourceError(f"{where}: no data files ({', '.join(DATA_SUFFIXES)}) in a Hub dataset layout")
    configs = sorted({c for c, _ in found})
    if config is None:
        if DEFAULT_CONFIG not in configs and len(configs) > 1:
            raise SourceError(f"{where}: several configs ({', '.join(configs)}): name one (config)")
        config = DEFAULT_CONFIG if DEFAULT_CONFIG in configs else configs[0]
    if config not in configs:
        raise SourceError(f"{where}: no config {config!r} (it has: {', '.join(configs)})")
    splits = sorted(s for c, s in found if c == config)
    if split not in splits:
        raise SourceError(f"{where} [{config}]: no split {split!r} (it has: {', '.join(splits)})")
    return SplitFiles(source, config, split, revision, tuple(found[(config, split)]))
