"""The identity of the local benchmark files an eval reads (`Stage.inputs`): part of its fingerprint, so
an edited local copy is scored again instead of served from the cache. Hub sources are named by id and
revision in the config itself."""

from __future__ import annotations

from pathlib import Path

from stages.common.rows import SourceError
from stages.eval.config import EvalConfig, benchmark_splits, is_local


def benchmark_files(cfg: EvalConfig) -> dict[str, str]:
    """`<benchmark>:<file>` -> size and modification time of every local file a benchmark reads."""
    identities: dict[str, str] = {}
    for name, spec in cfg.benchmarks.items():
        try:
            if not is_local(spec, cfg.hub_mirror):
                continue
            files = {file for split in benchmark_splits(spec, cfg.hub_mirror) if split for file in split.files}
        except SourceError as exc:  # the stage reports it when it opens the benchmark
            identities[name] = f"unreadable:{exc}"
            continue
        for file in sorted(files):
            info = Path(file).stat()
            identities[f"{name}:{file}"] = f"size:{info.st_size},mtime_ns:{info.st_mtime_ns}"
    return identities
