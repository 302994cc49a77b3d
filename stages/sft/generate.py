"""Greedy generation without a KV cache (plenty for a held-out check) and chat-format adherence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def greedy(
    model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_id: int, batch_size: int = 16
) -> list[list[int]]:
    """Each prompt's continuation, up to and including `stop_id`, at most `max_new_tokens` long.

    Prompts of a batch sit left-aligned and right-padded: attention is causal, so a row's next
    token depends only on its own tokens before its current end, whatever the padding after.
    Rows that have stopped leave the batch, so short replies cost nothing once finished."""
    device = next(model.parameters()).device
    replies: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = [list(p) for p in prompts[start : start + batch_size]]
        lengths = torch.tensor([len(p) for p in batch], device=device)
        tokens = torch.full((len(batch), int(lengths.max()) + max_new_tokens), stop_id, device=device)
        for row, prompt in enumerate(batch):
            tokens[row, : len(prompt)] = torch.tensor(prompt, device=device)
        out: list[list[int]] = [[] for _ in batch]
        active = torch.arange(len(batch), device=device)
        for _ in range(max_new_tokens):
            ends = lengths[active]
            logits = model(tokens[active, : int(ends.max())])
            chosen = logits[torch.arange(len(active), device=device), ends - 1].argmax(dim=-1)
            tokens[active, ends] = chosen
            lengths[active] = ends + 1
            for row, token in zip(active.tolist(), chosen.tolist(), strict=True):
                out[row].append(token)
            active = active[chosen != stop_id]
            if len(active) == 0:
                break
        replies += out
    return replies


def ends_turn(reply: Sequence[int], stop_id: int) -> bool:
    return bool(reply) and reply[-1] == stop_id
