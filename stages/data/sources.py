"""Expands configured sources into files, splits them into per-task shards, and names the local
input files for the fingerprint.

A source's files come from its paths, its listing (`stages.data.listing`) or its dataset's config and
split (`stages.common.hub`), sliced by `take`; a listing or dataset that cannot be resolved or sliced, or
whose first file lacks the text column, is a SourceError naming the source, the key and the reason,
raised before any task runs (local ones when the run is planned, as a config error). Tasks get whole
files, round robin: every row is read by exactly one task, whether or not the files divide evenly.
"""

from __future__ import annotations

import glob as globlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import fsspec

from pipeline.errors import UsageError
from stages.common import hub
from stages.common.rows import SourceError, require_columns
from stages.data.config import DataConfig, SourceConfig
from stages.data.listing import listed_files, listing_uri, take
from stages.data.readers import Shard

EXTENSIONS = {
    "samples": (".warc", ".warc.gz"),
    "warc": (".warc", ".warc.gz", ".arc.gz"),
    "wet": (".wet", ".wet.gz", ".warc.wet.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".jsonl.zst"),
    "parquet": (".parquet",),
}


# Local files up to this size are identified by content, larger ones by size and modification time.
HASHED_BYTES = 1 << 20
LOCAL_PROTOCOLS = ("file", "local")


@dataclass(frozen=True)
class Unreadable:
    source: str
    path: str
    error: str


class UnreadableInput(RuntimeError):
    """Input files that could not be read, of a source that does not allow partial input."""


def expand(source: SourceConfig) -> tuple[list[str], list[Unreadable]]:
    """Files (as fsspec URIs) behind each path, folder or glob; paths that yield nothing are reported."""
    files: list[str] = []
    problems: list[Unreadable] = []
    for pattern in source.paths:
        try:
            fs, root = fsspec.core.url_to_fs(pattern)
            if globlib.has_magic(root):
                found = fs.glob(root)
            elif fs.isdir(root):
                found = [p for p in fs.find(root) if p.endswith(EXTENSIONS[source.kind])]
            else:
                found = [root] if fs.exists(root) else []
            if not found:
                raise FileNotFoundError("no such file, or nothing matched")
            files.extend(fs.unstrip_protocol(p) if "://" in pattern else p for p in sorted(found))
        except Exception as exc:  # bad URI, no permission, no credentials, nothing matched
            problems.append(Unreadable(source.name, pattern, f"{type(exc).__name__}: {exc}"))
    return files, problems


def source_files(source: SourceConfig) -> tuple[list[str], list[Unreadable]]:
    """The source's files in order, sliced by `take`. Paths that cannot be listed come back as Unreadable
    (`allow_partial` may let the stage go on without them); a listing or dataset that cannot be resolved
    or sliced, or a text column the first file lacks, is a SourceError("source NAME: ...")."""
    problems: list[Unreadable] = []
    try:
        if source.kind == "hf":
            dataset, subset, split = source.dataset or "", source.subset, source.split
            files, what = hub.data_files(dataset, subset, split), hub.describe(dataset, subset, split)
        elif source.listing or source.crawl:
            files, what = listed_files(source), f"listing {listing_uri(source)}"
        else:
            (files, problems), what = expand(source), "its paths"
        if files:
            files = take(files, source.take, what)
            if source.kind in ("hf", "parquet"):
                require_columns(files[0], [source.text_key], f"{what} (text_key)")
    except SourceError as exc:
        raise SourceError(f"source {source.name}: {exc}") from None
    return files, problems


def plan_shards(cfg: DataConfig, resolved: list[SourceConfig]) -> tuple[list[Shard], list[Unreadable]]:
    """Splits `cfg.tasks` over the sources in proportion to their files; each task reads whole files.

    Every source gets at least one task, so the shard count can exceed `cfg.tasks` slightly; a source
    gets at most one task per file.
    """
    listed: list[tuple[SourceConfig, list[str]]] = []
    problems: list[Unreadable] = []
    for source in resolved:
        files, bad = source_files(source)
        problems.extend(bad)
        if files:
            listed.append((source, files))
    weights = [len(files) for _, files in listed]
    total = sum(weights) or 1
    shards: list[Shard] = []
    for (source, files), weight in zip(listed, weights, strict=True):
        n = max(1, min(weight, round(cfg.tasks * weight / total)))
        for part in range(n):
            rank = len(shards)
            chunk = tuple(files[part::n])
            shards.append(Shard(rank=rank, source=source, files=chunk, part=part, parts=n))
    return shards, problems


def refuse_unreadable(failed: dict[str, dict[str, str]], sources: dict[str, SourceConfig], shown: int = 20) -> None:
    """Fails naming the files (source -> {path: why}) of every source without `allow_partial`."""
    refused = {name: files for name, files in failed.items() if files and not sources[name].allow_partial}
    if not refused:
        return
    listed = [f"{path} ({why})" for name in sorted(refused) for path, why in sorted(refused[name].items())]
    more = f"; and {len(listed) - shown} more" if len(listed) > shown else ""
    raise UnreadableInput(
        f"source {', '.join(sorted(refused))}: {len(listed)} input file(s) could not be read, whole or in part: "
        f"{'; '.join(listed[:shown])}{more}. Fix or remove them, or set `allow_partial: true` on the source to go "
        "on without them (they are then named in stats.json)"
    )


def _local(pattern: str) -> bool:
    return fsspec.core.split_protocol(pattern)[0] in (None, *LOCAL_PROTOCOLS)


def _identity(path: str) -> str:
    local = Path(fsspec.core.strip_protocol(path))
    info = local.stat()
    if info.st_size <= HASHED_BYTES:
        return "sha256:" + hashlib.sha256(local.read_bytes()).hexdigest()
    return f"size:{info.st_size},mtime_ns:{info.st_mtime_ns}"


def _local_inputs(source: SourceConfig) -> tuple[list[str], list[Unreadable]]:
    """The local files a source reads. A local listing or dataset folder is resolved (and sliced) as the
    stage will resolve it, so what cannot be is a config error now, before anything runs."""
    resolved = source.kind == "hf" or bool(source.listing or source.crawl)
    if not resolved:
        return expand(source.model_copy(update={"paths": [p for p in source.paths if _local(p)]}))
    if not (Path(source.dataset or "").is_dir() if source.kind == "hf" else _local(listing_uri(source))):
        return [], []  # on the Hub or another remote store: resolved when the stage runs
    try:
        files, _ = source_files(source)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    listing = [] if source.kind == "hf" else [listing_uri(source)]
    return [*listing, *(path for path in files if _local(path))], []


def input_identities(cfg: DataConfig) -> dict[str, str]:
    """`<source>:<file>` -> identity of every local input file, for the stage's fingerprint: an edited
    input is read again instead of served from the cache. Remote files (s3://, hf://, Hub datasets,
    remote listings) are not listed; the sample corpus is built from pinned archives, the config and
    the seed."""
    identities: dict[str, str] = {}
    for source in cfg.sources:
        if source.kind == "samples":
            continue
        files, problems = _local_inputs(source)
        for path in files:
            try:
                identities[f"{source.name}:{path}"] = _identity(path)
            except OSError as exc:  # the stage reports it when it reads the file
                identities[f"{source.name}:{path}"] = f"unreadable:{type(exc).__name__}"
        for problem in problems:
            identities[f"{source.name}:{problem.path}"] = f"unreadable:{problem.error}"
    return identities
