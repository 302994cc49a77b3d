"""Yardsticks: a measured matmul peak (for MFU) and the val split's tokens per byte (for bits per byte)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from stages.common.shards import Split

if TYPE_CHECKING:  # tiktoken stays optional for the standalone benchmark
    from stages.common.tokenizer import Tokenizer


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of repeated square matmuls: the practical peak of this device at this dtype."""
    if device.type == "cuda":
        size = max(size, 8192)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: kernels selected, caches filled
    _sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        a @ b
        runs += 1
        if runs % 4 == 0:
            _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - start
    return 2 * size**3 * runs / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokens_per_byte(split: Split, tokenizer: Tokenizer, max_documents: int = 2000) -> float:
    """Tokens per UTF-8 byte over the leading documents, each document's `<|bos|>` included
    (the model predicts it too) but contributing no bytes."""
    tokens = n_bytes = 0
    for i, document in enumerate(split.documents()):
        if i == max_documents:
            break
        tokens += len(document)
        n_bytes += len(tokenizer.decode_bytes(document[1:].tolist()))
    return tokens / max(n_bytes, 1)


def bits_per_byte(loss_nats: float, tokens_per_byte_: float) -> float:
    return loss_nats / math.log(2) * tokens_per_byte_


def unigram_loss(train: Split, val: Split) -> float:
    """Cross-entropy (nats) of the val tokens under the train split's token frequencies (add-one
    smoothed): what a model that ignores context scores. A model that learns beats it clearly."""
    counts = np.ones(train.vocab_size, dtype=np.float64)
    for tokens in train.tokens:
        counts += np.bincount(tokens, minlength=train.vocab_size)[: train.vocab_size]
    log_probs = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for tokens in val.tokens:
        total -= float(log_probs[np.asarray(tokens, dtype=np.int64)].sum())
        n += len(tokens)
    return total / max(n, 1)
