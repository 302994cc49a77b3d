"""Encoding documents into token shards on Ray.

The driver reads documents in order and cuts them into chunks of about `chunk_chars`
characters, one split per chunk; Ray tasks encode chunks; the driver writes results in
submission order. So shards are the same for any number of tasks, and at most `tasks`
chunks are in flight (bounded memory), while the driver reads ahead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from stages.common.shards import ShardInfo, ShardWriter, write_index
from stages.common.tokenizer import Tokenizer
from stages.tokenizer.corpus import CorpusStats, is_val, read_documents

SPLITS = ("train", "val")

_worker_tokenizers: dict[str, Tokenizer] = {}  # per worker process: built once, reused by later chunks


@dataclass
class SplitStats:
    documents: int = 0
    tokens: int = 0  # <|bos|> included
    bytes: int = 0  # UTF-8 bytes of the text
    shards: list[ShardInfo] = field(default_factory=list)
    sample: list[str] = field(default_factory=list)  # the first texts, for comparing vocabularies
    sample_chars: int = 0

    @property
    def bytes_per_token(self) -> float:
        text_tokens = self.tokens - self.documents
        return self.bytes / text_tokens if text_tokens else 0.0


@dataclass
class ShardResult:
    splits: dict[str, SplitStats]
    corpus: CorpusStats
    seconds: float
    index: dict[str, Any]


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Flat tokens of `texts`, each prefixed with <|bos|>; per-document lengths; UTF-8 bytes."""
    bos = np.array([tokenizer.bos_id], dtype=np.uint32)
    pieces: list[np.ndarray] = []
    for text in texts:
        pieces += (bos, tokenizer.encode_array(text))
    lengths = np.array([len(piece) for piece in pieces[1::2]], dtype=np.int64) + 1
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return np.concatenate(pieces).astype(tokenizer.dtype), lengths, n_bytes


def _encode_task(
    key: str, boxed_tokenizer: list[ray.ObjectRef], texts: list[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    if key not in _worker_tokenizers:
        _worker_tokenizers[key] = ray.get(boxed_tokenizer[0])
    return encode_documents(_worker_tokenizers[key], texts)


def shard_corpus(
    files: list[Path],
    tokenizer: Tokenizer,
    out_dir: Path,
    *,
    seed: int,
    val_fraction: float,
    shard_tokens: int,
    chunk_chars: int,
    compare_chars: int,
    tasks: int,
    cpus_per_task: float,
    on_chunk: Callable[[int], None] = lambda n_bytes: None,
) -> ShardResult:
    """Write train/val shards and `index.json` into `out_dir`; `on_chunk` gets each encoded chunk's bytes.

    `tasks == 0` encodes in this process (the stage task holds the CPU); otherwise in Ray tasks
    of `cpus_per_task` CPUs each, at most `tasks` at a time."""
    start = time.perf_counter()
    corpus = CorpusStats()
    stats = {split: SplitStats() for split in SPLITS}
    writers = {split: ShardWriter(out_dir, split, tokenizer.dtype, shard_tokens) for split in SPLITS}
    key = tokenizer.digest()
    boxed = [ray.put(tokenizer)] if tasks else []
    remote = ray.remote(_encode_task).options(num_cpus=cpus_per_task) if tasks else None
    pending: deque[tuple[str, Any]] = deque()

    def collect(split: str, result: tuple[np.ndarray, np.ndarray, int]) -> None:
        tokens, lengths, n_bytes = result
        writers[split].add(tokens, lengths)
        stats[split].tokens += len(tokens)
        stats[split].bytes += n_bytes
        on_chunk(n_bytes)

    def submit(split: str, texts: list[str]) -> None:
        if remote is None:
            collect(split, encode_documents(tokenizer, texts))
            return
        if len(pending) >= tasks:
            collect(*_get(pending.popleft()))
        pending.append((split, remote.remote(key, boxed, texts)))

    buffers: dict[str, list[str]] = {split: [] for split in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    for doc_id, text in read_documents(files, corpus):
        split = "val" if is_val(doc_id, seed, val_fraction) else "train"
        stats[split].documents += 1
        if stats[split].sample_chars < compare_chars:
            stats[split].sample.append(text)
            stats[split].sample_chars += len(text)
        buffers[split].append(text)
        sizes[split] += len(text)
        if sizes[split] >= chunk_chars:
            submit(split, buffers[split])
            buffers[split], sizes[split] = [], 0
    for split in SPLITS:
        if buffers[split]:
            submit(split, buffers[split])
    while pending:
        collect(*_get(pending.popleft()))
    for split in SPLITS:
        stats[split].shards = writers[split].close()
    index = write_index(
        out_dir, tokenizer.dtype, tokenizer.vocab_size, tokenizer.bos_id, {s: stats[s].shards for s in SPLITS}
    )
    return ShardResult(stats, corpus, time.perf_counter() - start, index)


def _get(item: tuple[str, Any]) -> tuple[str, tuple[np.ndarray, np.ndarray, int]]:
    split, ref = item
    return split, ray.get(ref)
