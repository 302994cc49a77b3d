"""The identity of the local benchmark files an eval reads (`Stage.inputs`): part of its fingerprint, so
an edited local copy is scored again instead of served from the cache. Hub sources are named by id and
revision in the config itself."""

from __future__ import annotations

from stages.common.rows import SourceError
from stages.eval.config import EvalConfig
from stages.eval.hub_layout import Source, split_files


def benchmark_files(cfg: EvalConfig) -> dict[str, str]:
    """`<benchmark>:<file>` -> size and modification time of every local file a benchmark reads."""
    identities: dict[str, str] = {}
    for name, spec in cfg.benchmarks.items():
        try:
            source = Source.of(spec.source or "", spec.revision, cfg.hub_mirror)
            if source.folder is None:
                continue
            splits = [spec.split, spec.fewshot_split] if spec.fewshot else [spec.split]
            paths = {path for split in splits for path in split_files(source, spec.config, split or "").paths}
        except SourceError as exc:  # the stage reports it when it opens the benchmark
            identities[name] = f"unreadable:{exc}"
            continue
        for path in sorted(paths):
            info = (source.folder / path).stat()
            identities[f"{name}:{source.folder / path}"] = f"size:{info.st_size},mtime_ns:{info.st_mtime_ns}"
    return identities
