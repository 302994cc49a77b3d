"""Data stage benchmark: throughput per block and for the whole stage, orchestration cost against
datatrove's own LocalPipelineExecutor on the same input, and MinHash cost at a few corpus sizes.

    python bench/data.py [--workdir .z2h] [--workers 2] [--tasks 4] [--scale 1] [--minhash-sizes 250 1000 4000]
    python bench/data.py --scale 0.1 --tasks 2 --workers 1 --minhash-sizes 100   # smallest (CI smoke test)

Prints human-readable lines, then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import tempfile
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from stages.common.packages import cache_dir
from stages.data.config import DataConfig, SamplesConfig, SourceConfig
from stages.data.funnel import Tally, doc_bytes
from stages.data.readers import Shard, open_source

SAMPLES = {"news_pages": 30, "bbc_articles": 100, "wikipedia": 120, "shakespeare_scenes": 12, "warc_files": 4}
MINHASH_SIZES = [250, 1000, 4000]


class ShardReader(PipelineStep):
    """The stage's reader as a datatrove step, so LocalPipelineExecutor reads exactly the same records."""

    name = "z2h reader"

    def __init__(self, source: SourceConfig, files: list[str], cap: int):
        super().__init__()
        self.source, self.files, self.cap = source, files, cap

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        shard = Shard(rank=rank, source=self.source, files=tuple(self.files[rank::world_size]))
        yield from open_source(shard, Tally(), self.cap)


def per_block(
    cfg: DataConfig, source: SourceConfig, files: list[str], package_cache: Path
) -> tuple[list[dict], int, int]:
    """One process, block by block over materialised lists: docs/s and MB/s of each block's input."""
    from stages.data.recipe import filter_blocks

    tally = Tally()
    rows = []
    start = time.perf_counter()
    docs = list(open_source(Shard(0, source, tuple(files)), tally, cfg.max_page_bytes))
    raw_bytes = tally.bytes["read.in"]
    rows.append(_row("read", tally.docs["read.in"], raw_bytes, time.perf_counter() - start))
    first_docs = len(docs)
    for name, step in filter_blocks(cfg, tally, source, package_cache):
        size = sum(doc_bytes(d) for d in docs)
        start = time.perf_counter()
        out = list(step(iter(docs)))
        rows.append(_row(name, len(docs), size, time.perf_counter() - start))
        docs = out
    from datatrove.pipeline.dedup import MinhashDedupSignature

    from stages.data.dedup import dt_config

    with tempfile.TemporaryDirectory() as folder:
        size = sum(doc_bytes(d) for d in docs)
        start = time.perf_counter()
        MinhashDedupSignature(folder, config=dt_config(cfg.minhash)).run(iter(docs), 0, 1)
        rows.append(_row("minhash_signature", len(docs), size, time.perf_counter() - start))
    return rows, first_docs, raw_bytes


def _row(block: str, docs: int, size: int, seconds: float) -> dict:
    seconds = max(seconds, 1e-9)
    return {
        "block": block,
        "docs": docs,
        "seconds": round(seconds, 3),
        "docs_per_s": round(docs / seconds, 1),
        "mb_per_s": round(size / seconds / 1e6, 3),
    }


def run_stage(cfg: DataConfig, workdir: Path, root: Path) -> tuple[float, dict]:
    import ray

    from pipeline.local import local_context
    from stages.data import stage

    if not ray.is_initialized():
        ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = local_context("data", cfg, root, seed=1337, workdir=workdir)
    start = time.perf_counter()
    metrics = stage.run(ctx)
    return time.perf_counter() - start, metrics


def run_datatrove(
    cfg: DataConfig, source: SourceConfig, files: list[str], root: Path, tasks: int, package_cache: Path
) -> float:
    """The same blocks, phases and task counts, run by datatrove's LocalPipelineExecutor."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from stages.data.dedup import dt_config
    from stages.data.recipe import OfflineURLFilter, filter_blocks

    mh = dt_config(cfg.minhash)
    # a fresh URL filter: the stage's per-process instance carries its parsed blocklists, far too big to ship
    fresh = {"url_filter": OfflineURLFilter(**cfg.url_filter.model_dump(exclude={"enabled"}))}
    stock = filter_blocks(cfg, Tally(), source, package_cache)
    blocks = [fresh.get(name, step) for name, step in stock]
    phases = [
        (
            [
                ShardReader(source, files, cfg.max_page_bytes),
                *blocks,
                JsonlWriter(f"{root}/filtered"),
                MinhashDedupSignature(f"{root}/sigs", config=mh),
            ],
            tasks,
        ),
        ([MinhashDedupBuckets(f"{root}/sigs", f"{root}/dups", config=mh)], mh.num_buckets),
        ([MinhashDedupCluster(f"{root}/dups", f"{root}/remove", config=mh)], 1),
        ([JsonlReader(f"{root}/filtered"), MinhashDedupFilter(f"{root}/remove"), JsonlWriter(f"{root}/out")], tasks),
    ]
    start = time.perf_counter()
    for n, (pipeline, task_count) in enumerate(phases):
        workers = min(cfg.workers, task_count)
        LocalPipelineExecutor(
            pipeline, tasks=task_count, workers=workers, logging_dir=f"{root}/logs{n}", skip_completed=False
        ).run()
    return time.perf_counter() - start


def minhash_scaling(cfg: DataConfig, sizes: list[int]) -> list[dict]:
    """MinHash stages 1-3 in one process on synthetic 300-word documents (~10% near-duplicates)."""
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature

    from stages.data.dedup import dt_config

    mh = dt_config(cfg.minhash)
    rng = random.Random(0)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(20000)]
    rows = []
    for size in sizes:
        texts = [[rng.choice(vocab) for _ in range(300)] for _ in range(size)]
        for i in range(0, size, 10):  # plant near-duplicates
            texts[i] = [*texts[i - 1][:-3], *rng.choices(vocab, k=3)] if i else texts[i]
        docs = [Document(text=" ".join(t), id=str(i)) for i, t in enumerate(texts)]
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            MinhashDedupSignature(f"{folder}/sigs", config=mh).run(iter(docs), 0, 1)
            t1 = time.perf_counter()
            for bucket in range(mh.num_buckets):
                MinhashDedupBuckets(f"{folder}/sigs", f"{folder}/dups", config=mh).run(None, bucket, mh.num_buckets)
            t2 = time.perf_counter()
            MinhashDedupCluster(f"{folder}/dups", f"{folder}/remove", config=mh).run(None, 0, 1)
            t3 = time.perf_counter()
        rows.append(
            {
                "docs": size,
                "signature_s": round(t1 - t0, 3),
                "buckets_s": round(t2 - t1, 3),
                "cluster_s": round(t3 - t2, 3),
                "signature_docs_per_s": round(size / (t1 - t0), 1),
            }
        )
        print(f"minhash {size:>6} docs: signature {t1 - t0:6.2f}s  buckets {t2 - t1:6.2f}s  cluster {t3 - t2:6.2f}s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(".z2h"), help="holds the cached sample corpus")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="share of the sample corpus's documents used")
    parser.add_argument("--minhash-sizes", type=int, nargs="+", default=MINHASH_SIZES, help="synthetic corpus sizes")
    args = parser.parse_args()
    from loguru import logger

    logger.disable("datatrove")
    from stages.data.run import resolve_sources
    from stages.data.sources import expand

    samples = {k: v if k == "warc_files" else max(1, round(v * args.scale)) for k, v in SAMPLES.items()}
    cfg = DataConfig(samples=SamplesConfig(**samples), tasks=args.tasks, workers=args.workers)
    source = resolve_sources(cfg, args.workdir, 1337)[0]
    files, _ = expand(source)
    root = Path(tempfile.mkdtemp(prefix="z2h-bench-data-"))
    try:
        blocks, docs_in, raw_bytes = per_block(cfg, source, files, cache_dir(args.workdir))
        for row in blocks:
            print(f"{row['block']:>18}: {row['docs']:>5} docs {row['docs_per_s']:>8} docs/s {row['mb_per_s']:>7} MB/s")
        stage_s, metrics = run_stage(cfg, args.workdir, root / "stage")
        datatrove_s = run_datatrove(cfg, source, files, root / "datatrove", args.tasks, cache_dir(args.workdir))
        cores = args.workers
        print(f"stage on Ray: {stage_s:.1f}s; datatrove LocalPipelineExecutor: {datatrove_s:.1f}s ({cores} workers)")
        scaling = minhash_scaling(cfg, args.minhash_sizes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "bench": "data",
        "cpu_count": os.cpu_count(),
        "workers": cores,
        "documents_in": int(metrics["documents_in"]),
        "documents_out": int(metrics["documents_out"]),
        "input_mb": round(raw_bytes / 1e6, 2),
        "blocks_one_core": blocks,
        "stage_seconds": round(stage_s, 2),
        "stage_docs_per_s_per_core": round(docs_in / stage_s / cores, 1),
        "stage_mb_per_s_per_core": round(raw_bytes / stage_s / cores / 1e6, 3),
        "datatrove_local_seconds": round(datatrove_s, 2),
        "orchestration_overhead": round(stage_s / datatrove_s - 1, 3),
        "minhash_scaling": scaling,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
