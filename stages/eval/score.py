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
    targets = targets.to(device)
    scored = targets != IGNORE  # the softmax runs only where a target is scored (not over the context)
    logits = model(inputs.to(device))[scored].float()
    nll = F.cross_entropy(logits, targets[scored], reduction="none")
    totals = torch.zeros(len(rows), device=device).index_add_(0, scored.nonzero()[:, 0], nll)
    return (-totals).tolist()


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


def _choice_batches(items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], seq_len: int, size: int):
    """Item indices in batches, by context length, that fit one cache: the longest context plus the
    longest option (minus its last token, never fed) within seq_len."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    batch: list[int] = []
    context = option = 0
    for index in order:
        ctx_len, opt_len = len(items[index][0]), max(len(o) for o in items[index][1])
        grown = max(context, ctx_len) + max(option, opt_len) - 1
        if batch and (len(batch) == size or grown > seq_len):
            yield batch
            batch, context, option = [], 0, 0
        batch.append(index)
        context, option = max(context, ctx_len), max(option, opt_len)
    if batch:
        yield batch


@torch.no_grad()
def _choice_batch(model: nn.Module, items) -> list[list[float]]:
    from stages.common.kv_cache import KVCache

    device = next(model.parameters()).device
    longest = max(len(context) for context, _ in items)
    tokens = torch.zeros((len(items), longest), dtype=torch.long)
    for row, (context, _) in enumerate(items):
        tokens[row, longest - len(context) :] = torch.as_tensor(context, dtype=torch.long)
    pads = torch.tensor([longest - len(context) for context, _ in items], device=device)
    owners = [row for row, (_, options) in enumerate(items) for _ in options]
    options = [list(option) for _, opts in items for option in opts]
    width = max(len(option) for option in options)
    cache = KVCache(model.cfg, pads, longest + width - 1)
    first = model(tokens.to(device), cache)[:, -1].float().log_softmax(dim=-1)  # predicts each option's first token
    owner_rows = torch.tensor(owners, device=device)
    firsts = torch.tensor([option[0] for option in options], device=device)
    totals = first[owner_rows, firsts]
    if width > 1:
        cache.keep(owner_rows)  # each context's keys and values, once per option
        feed = torch.zeros((len(options), width - 1), dtype=torch.long)
        targets = torch.full((len(options), width - 1), IGNORE, dtype=torch.long)
        for row, option in enumerate(options):
            ids = torch.as_tensor(option, dtype=torch.long)
            feed[row, : len(option) - 1] = ids[:-1]  # right padding: only later padding sees it
            targets[row, : len(option) - 1] = ids[1:]
        targets = targets.to(device)
        scored = targets != IGNORE
        logits = model(feed.to(device), cache)[scored].float()
        nll = F.cross_entropy(logits, targets[scored], reduction="none")
        totals = totals - torch.zeros(len(options), device=device).index_add_(0, scored.nonzero()[:, 0], nll)
    values = totals.tolist()
    out: list[list[float]] = [[] for _ in items]
    for owner, value in zip(owners, values, strict=True):
        out[owner].append(value)
    return out


def option_logprobs(
    model: nn.Module, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], batch_size: int = 32
) -> list[list[float]]:
    """For each (context, options): the summed log-probability of every option right after the
    context, as `continuation_logprobs` gives it, but reading each context once: its keys and
    values are cached and shared by its options (a 4-option question costs one context, not four)."""
    seq_len = model.cfg.seq_len
    for index, (context, options) in enumerate(items):
        if not context or not options or not all(options):
            raise ValueError(f"item {index}: empty context or option")
        if len(context) + max(len(o) for o in options) > seq_len + 1:
            raise ValueError(f"item {index}: context and its longest option exceed seq_len {seq_len} + 1")
    out: list[list[float]] = [[] for _ in items]
    for batch in _choice_batches(items, seq_len, batch_size):
        for index, scores in zip(batch, _choice_batch(model, [items[i] for i in batch]), strict=True):
            out[index] = scores
    return out
