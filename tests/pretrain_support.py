"""Helpers for the pretrain tests: small learnable token shards and a small config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.common.shards import ShardWriter, write_index
from stages.pretrain.config import PretrainConfig
from stages.pretrain.launch import run_local
from stages.pretrain.train import Job

VOCAB = 96


def write_shards(folder: Path, seed: int = 0, train_tokens: int = 40_000, val_tokens: int = 4_000) -> Path:
    """Shards of a learnable stream: each document counts up from a random start, mod the vocabulary."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, total in (("train", train_tokens), ("val", val_tokens)):
        writer = ShardWriter(folder, split, np.uint16, shard_tokens=total // 2)
        lengths = rng.integers(20, 200, size=total // 100)
        docs = [(rng.integers(1, VOCAB) + np.arange(n)) % (VOCAB - 1) + 1 for n in lengths]
        for doc in docs:
            doc[0] = 0  # <|bos|>
        writer.add(np.concatenate(docs), lengths)
        splits[split] = writer.close()
    write_index(folder, np.uint16, VOCAB, 0, splits)
    return folder


def small_config(**overrides) -> PretrainConfig:
    """4 layers and 4 heads (2 KV heads), SwiGLU of width 128: every mesh of the tests divides it."""
    base = dict(
        model=dict(seq_len=32, n_layer=4, n_head=4, n_kv_head=2, d_model=48, mlp="swiglu"),
        micro_batch=4,
        batch_tokens=256,
        max_steps=3,
        lr=1e-2,
        warmup_steps=1,
        eval_every=2,
        eval_batches=2,
        checkpoint_every=100,
        pp_microbatches=2,
        cpus_per_worker=1,
        peak_flops=1e9,
    )
    return PretrainConfig.model_validate({**base, **overrides})


def run_job(job: Job) -> dict:
    """Rank 0's per-step losses and grad norms plus its final metrics."""
    result = run_local(job)
    return {"losses": result.losses, "grad_norms": result.grad_norms, **result.metrics}
