"""Deduplication glue around datatrove's MinHash stages 1-3.

Exact duplicates (optional) are found by hashing each surviving text and become extra
duplicate pairs for MinHash's clustering step, so both kinds of duplicate merge into one
cluster with exactly one survivor, whichever kind linked them.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import MinhashConfig as DtMinhashConfig

from stages.data.config import MinhashConfig
from stages.data.funnel import Tally

DEDUP_BLOCK = "dedup"


def dt_config(cfg: MinhashConfig) -> DtMinhashConfig:
    return DtMinhashConfig(
        n_grams=cfg.n_grams, num_buckets=cfg.num_buckets, hashes_per_bucket=cfg.hashes_per_bucket, seed=cfg.seed
    )


def text_hashes(data: Iterator[Document], out: Path) -> Iterator[Document]:
    """Pass-through that records a 64-bit hash of each text, in stream order (= MinHash doc index)."""
    hashes: list[int] = []
    for doc in data:
        hashes.append(xxhash.xxh3_64_intdigest(doc.text))
        yield doc
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.asarray(hashes, dtype=np.uint64))


def exact_pairs(hash_dir: Path, ranks: int, dups_dir: Path, num_files: int) -> dict[int, np.ndarray]:
    """Write (first occurrence, duplicate) pairs as datatrove `.dups` files; return duplicates per rank.

    Cost: all hashes at once in memory (16 bytes per document after filtering), one sort.
    """
    parts = [
        np.load(hash_dir / f"{rank:05d}.npy") if (hash_dir / f"{rank:05d}.npy").exists() else None
        for rank in range(ranks)
    ]
    hashes = np.concatenate([p for p in parts if p is not None] or [np.zeros(0, np.uint64)])
    rank_of = np.concatenate(
        [np.full(len(p), r, np.uint32) for r, p in enumerate(parts) if p is not None] or [np.zeros(0, np.uint32)]
    )
    idx_of = np.concatenate(
        [np.arange(len(p), dtype=np.uint32) for p in parts if p is not None] or [np.zeros(0, np.uint32)]
    )
    order = np.lexsort((idx_of, rank_of, hashes))  # stable: first occurrence = lowest (rank, index)
    h, r, i = hashes[order], rank_of[order], idx_of[order]
    is_dup = np.zeros(len(h), bool)
    is_dup[1:] = h[1:] == h[:-1]
    group_start = np.maximum.accumulate(np.where(~is_dup, np.arange(len(h)), 0))
    anchors = group_start[is_dup]
    pairs = np.stack([r[anchors], i[anchors], r[is_dup], i[is_dup]], axis=1).astype("<u4")
    dups_dir.mkdir(parents=True, exist_ok=True)
    for f in range(num_files):  # the cluster step expects a multiple of num_buckets files
        (dups_dir / f"exact_{f:05d}.dups").write_bytes(pairs[f::num_files].tobytes())
    return {rank: np.sort(i[is_dup][r[is_dup] == rank]) for rank in range(ranks)}


def cluster_counts(remove_dir: Path) -> dict[str, float]:
    """Cluster statistics from the `.clusters` files (doc index, cluster id) the cluster step wrote."""
    sizes: Counter = Counter()
    for path in sorted(remove_dir.glob("*.clusters")):
        pairs = np.frombuffer(path.read_bytes(), dtype="<u4").reshape(-1, 2)
        sizes.update(pairs[:, 1].tolist())
    histogram = Counter(sizes.values())
    return {
        "clusters": len(sizes),
        "documents_in_clusters": sum(sizes.values()),
        "largest_cluster": max(sizes.values(), default=0),
        "size_histogram": {str(k): v for k, v in sorted(histogram.items())},
    }


def dedup_filter(
    data: Iterator[Document], tally: Tally, remove_file: Path, exact: np.ndarray | None
) -> Iterator[Document]:
    """Drops the documents (by stream index) the cluster step marked; names exact copies apart."""
    remove = set()
    if remove_file.exists():
        raw = remove_file.read_bytes()
        remove = set(struct.unpack(f"<{len(raw) // 4}I", raw))
    exact_set = set(exact.tolist()) if exact is not None else set()
    for idx, doc in enumerate(data):
        if idx in remove:
            tally.remove_doc(DEDUP_BLOCK, "exact_duplicate" if idx in exact_set else "near_duplicate", doc)
            continue
        yield doc
