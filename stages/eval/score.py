"""Likelihood arithmetic on a model: log-probability of a continuation given its context, and the
summed next-token loss of held-out windows. Pure functions of (model, token ids)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


@torch.no_grad()
def _summed_logprobs(model: nn.Module, rows: Sequence[tuple[Sequence[int], int]]) -> list[float]:
    """For each (sequence, start): sum of log p(sequence[i] | sequence[:i]) for i >= start."""
    device = next(model.parameters()).device
    width = max(len(seq) for seq, _ in rows) - 1
    inputs = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for row, (seq, start) in enumerate(rows):
        ids = torch.as_tensor(seq, dtype=torch.long)
        inputs[row, : len(seq) - 1] = ids[:-1]
        targets[row, start - 1 : len(seq) - 1] = ids[start:]  # right padding stays unseen (causal)
    logits = model(inputs.to(device)).float()
    nll = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=IGNORE, reduction="none")
    return (-nll.view(len(rows), width).sum(dim=1)).tolist()


def continuation_logprobs(
    model: nn.Module, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32
) -> list[float]:
    """Summed log-probability of each continuation right after its context (context non-empty;
    context + continuation at most seq_len + 1 tokens). Batched by length, results in input order."""
    seq_len = model.cfg.seq_len
    rows = []
    for index, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"pair {index}: empty context or continuation")
        if len(context) + len(continuation) > seq_len + 1:
            raise ValueError(f"pair {index}: {len(context) + len(continuation)} tokens exceed seq_len {seq_len} + 1")
        rows.append(([*context, *continuation], len(context)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = [0.0] * len(rows)
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        for index, value in zip(chunk, _summed_logprobs(model, [rows[i] for i in chunk]), strict=True):
            out[index] = value
    return out


def window_nats(model: nn.Module, windows: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
    """Summed next-token loss (nats) over each window's tokens 1..n, predicted from those before."""
    out: list[float] = []
    for begin in range(0, len(windows), batch_size):
        chunk = [(window, 1) for window in windows[begin : begin + batch_size]]
        out += [-value for value in _summed_logprobs(model, chunk)]
    return out
