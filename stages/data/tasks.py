"""The stage's four phases as task functions, each idempotent behind a completion marker.

A task writes its outputs under fixed, rank-named paths in the scratch folder and its
marker (its tally, as JSON) last, via an atomic rename. A rerun skips tasks with a
marker and overwrites whatever a killed task left behind, so output is never duplicated.

  1. filter   per input shard: read → FineWeb filters → filtered shard + MinHash signatures
              (a shard with input files that failed gets no marker unless its source allows partial
              input: the stage fails on it, and a rerun reads the files again)
  2. buckets  per MinHash bucket: find duplicate pairs (datatrove MinHash stage 2)
  3. cluster  once: exact-duplicate pairs + union-find over all pairs (datatrove stage 3)
  4. final    per shard: drop all but one document per cluster → output shard

Scaling of the MinHash phases (bench/data.py measures them): signatures cost ~8 ms per
300-word document and spread over all shards; the bucket phase is `num_buckets` parallel
tasks (14 by default, so at most 14 CPUs), each a k-way merge of sorted signature files,
cheap next to signatures. The cluster phase is the one serial step, as in datatrove: a
Python union-find over the duplicate pairs only, so its memory and time grow with the
number of duplicates (not documents). The optional exact-dedup reduction also runs there
and holds 16 bytes per surviving document in memory (~16 GB per billion documents).
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from stages.data.config import DataConfig
from stages.data.dedup import DEDUP_BLOCK, cluster_counts, dedup_filter, dt_config, exact_pairs, text_hashes
from stages.data.funnel import Tally, meter
from stages.data.readers import Shard, open_source

# datatrove logs per document (timeouts, "no .remove file"); every such event lands in a tally instead.
logger.disable("datatrove")

EXTRACTION_PROBLEMS = ("timeout", "broken_process", "clean_error")


def _marker(scratch: Path, phase: str, rank: int) -> Path:
    return scratch / "markers" / phase / f"{rank:05d}.json"


def _done(marker: Path) -> dict[str, Any] | None:
    return json.loads(marker.read_text()) if marker.exists() else None


def _commit(marker: Path, result: dict[str, Any]) -> dict[str, Any]:
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, marker)
    return {**result, "fresh": True}


def _result(tally: Tally) -> dict[str, Any]:
    return {"tally": tally.to_dict(), "samples": tally.samples}


def filter_shard(shard: Shard, cfg: DataConfig, scratch: Path, world: int, package_cache: Path) -> dict[str, Any]:
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.writers import JsonlWriter

    from stages.data.recipe import deduplicated, filter_blocks

    marker = _marker(scratch, "filter", shard.rank)
    if (done := _done(marker)) is not None:
        return done
    rank = shard.rank
    tally = Tally(sample_cap=cfg.removed_samples)
    data = open_source(shard, tally, cfg.max_page_bytes)
    blocks = filter_blocks(cfg, tally, shard.source, package_cache)
    for name, step in blocks:
        tally.block(name)
        data = meter(step(meter(data, tally, f"{name}.in"), rank, world), tally, f"{name}.out")
    data = JsonlWriter(str(scratch / "filtered"), output_filename=f"{rank:05d}.jsonl.gz")(data, rank, world)
    dedup = deduplicated(shard.source)
    if cfg.exact_dedup.enabled and dedup:
        data = text_hashes(data, scratch / "exact" / "hashes" / f"{rank:05d}.npy")
    if cfg.minhash.enabled and dedup:
        MinhashDedupSignature(str(scratch / "minhash" / "sigs"), config=dt_config(cfg.minhash)).run(data, rank, world)
    else:
        deque(data, maxlen=0)
    for name, step in blocks:
        if name == "extraction":
            for problem in EXTRACTION_PROBLEMS:  # counted by datatrove's extractor itself
                if problem in step.stats.stats:
                    tally.removed[f"{name}.{problem}"] += int(step.stats.stats[problem].total)
            tally.reconcile(name, "no_text")
    if tally.failed_files and not shard.source.allow_partial:
        return _result(tally)
    return _commit(marker, _result(tally))


def find_bucket_pairs(bucket: int, cfg: DataConfig, scratch: Path) -> dict[str, Any]:
    from datatrove.pipeline.dedup import MinhashDedupBuckets

    marker = _marker(scratch, "buckets", bucket)
    if (done := _done(marker)) is not None:
        return done
    config = dt_config(cfg.minhash)
    step = MinhashDedupBuckets(str(scratch / "minhash" / "sigs"), str(scratch / "minhash" / "dups"), config=config)
    step.run(None, bucket, config.num_buckets)
    return _commit(marker, {"bucket": bucket})


def cluster(cfg: DataConfig, scratch: Path, world: int) -> dict[str, Any]:
    from datatrove.pipeline.dedup import MinhashDedupCluster

    marker = _marker(scratch, "cluster", 0)
    if (done := _done(marker)) is not None:
        return done
    config = dt_config(cfg.minhash)
    dups = scratch / "minhash" / "dups"
    dups.mkdir(parents=True, exist_ok=True)
    if cfg.exact_dedup.enabled:
        exact = exact_pairs(scratch / "exact" / "hashes", world, dups, config.num_buckets)
        for rank, indices in exact.items():
            np.save(scratch / "exact" / f"{rank:05d}.dup.npy", indices)
    step = MinhashDedupCluster(str(dups), str(scratch / "minhash" / "remove"), config=config, save_cluster_id=True)
    step.run(None, 0, 1)
    return _commit(marker, {"clusters": cluster_counts(scratch / "minhash" / "remove")})


def _output_record(writer, doc) -> dict[str, Any]:
    meta = dict(doc.metadata)
    fields = {key: meta.pop(key, None) for key in ("url", "language", "language_score", "source")}
    meta.pop("minhash_cluster_id", None)
    # JsonlReader records the intermediate shard it read (a scratch path deleted at commit): it
    # would make the same documents differ between work dirs.
    meta.pop("file_path", None)
    return {"id": doc.id, "text": doc.text, **fields, "metadata": meta}


def finalize_shard(rank: int, cfg: DataConfig, scratch: Path, world: int, dedup: bool) -> dict[str, Any]:
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    marker = _marker(scratch, "final", rank)
    if (done := _done(marker)) is not None:
        return done
    tally = Tally(sample_cap=cfg.removed_samples)
    name = f"{rank:05d}.jsonl.gz"
    filtered = scratch / "filtered"
    data = JsonlReader(str(filtered)).read_file(name) if (filtered / name).exists() else iter(())
    if dedup:
        exact_file = scratch / "exact" / f"{rank:05d}.dup.npy"
        exact = np.load(exact_file) if exact_file.exists() else None
        remove = scratch / "minhash" / "remove" / f"{rank:06d}.remove"
        tally.block(DEDUP_BLOCK)
        data = dedup_filter(meter(data, tally, f"{DEDUP_BLOCK}.in"), tally, remove, exact)
        data = meter(data, tally, f"{DEDUP_BLOCK}.out")
    writer = JsonlWriter(str(scratch / "final"), output_filename=name, adapter=_output_record)
    deque(writer(data, rank, world), maxlen=0)
    return _commit(marker, _result(tally))
