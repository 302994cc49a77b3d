"""Expands configured sources into files and splits them into per-task shards."""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass

import fsspec

from stages.data.config import DataConfig, SourceConfig
from stages.data.readers import Shard

EXTENSIONS = {
    "samples": (".warc", ".warc.gz"),
    "warc": (".warc", ".warc.gz", ".arc.gz"),
    "wet": (".wet", ".wet.gz", ".warc.wet.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".jsonl.zst"),
    "parquet": (".parquet",),
}


@dataclass(frozen=True)
class Unreadable:
    source: str
    path: str
    error: str


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


def plan_shards(cfg: DataConfig, resolved: list[SourceConfig]) -> tuple[list[Shard], list[Unreadable]]:
    """Splits `cfg.tasks` over the sources in proportion to their files (a dataset counts as `tasks` files).

    Every source gets at least one task, so the shard count can exceed `cfg.tasks` slightly.
    """
    listed: list[tuple[SourceConfig, list[str]]] = []
    problems: list[Unreadable] = []
    for source in resolved:
        if source.kind == "hf":
            listed.append((source, []))
            continue
        files, bad = expand(source)
        problems.extend(bad)
        if files:
            listed.append((source, files))
    weights = [len(files) or cfg.tasks for _, files in listed]
    total = sum(weights) or 1
    shards: list[Shard] = []
    for (source, files), weight in zip(listed, weights, strict=True):
        n = max(1, min(weight, round(cfg.tasks * weight / total)))
        for part in range(n):
            rank = len(shards)
            chunk = tuple(files[part::n])
            shards.append(Shard(rank=rank, source=source, files=chunk, part=part, parts=n))
    return shards, problems
