"""Rendered conversations -> fixed-length rows of ids and loss mask.

Packed: whole conversations placed first-fit into rows of `row_len` tokens (a conversation is
never split across rows); unpacked: one conversation per row. Both pad the tail with `pad_id`
under mask 0. Rows are `row_len = seq_len + 1` long so inputs `row[:-1]` and targets `row[1:]`
are both `seq_len`. Packed conversations share causal attention inside a row, as nanochat's
do; each starts with <|bos|>, which marks the boundary for the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.common.chat import Rendered

LOOKBACK = 64  # open rows searched for room; bounds packing time at a sliver of fill lost


@dataclass(frozen=True)
class Rows:
    ids: np.ndarray  # (rows, row_len) int64
    mask: np.ndarray  # (rows, row_len) uint8: 1 where the token is an assistant target

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def loss_tokens(self) -> int:
        return int(self.mask[:, 1:].sum())

    @property
    def efficiency(self) -> float:
        """Share of target positions that carry loss."""
        targets = self.mask[:, 1:].size
        return self.loss_tokens / targets if targets else 0.0


def pack(conversations: Sequence[Rendered], row_len: int, pad_id: int, packing: bool = True) -> Rows:
    rows: list[list[Rendered]] = []
    room: list[int] = []
    for conversation in conversations:
        size = len(conversation.ids)
        if size > row_len:
            raise ValueError(f"a conversation of {size} tokens cannot fit a row of {row_len}")
        first = max(0, len(rows) - LOOKBACK)
        target = next((i for i in range(first, len(rows)) if room[i] >= size), None) if packing else None
        if target is None:
            rows.append([])
            room.append(row_len)
            target = len(rows) - 1
        rows[target].append(conversation)
        room[target] -= size
    ids = np.full((len(rows), row_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), row_len), dtype=np.uint8)
    for r, row in enumerate(rows):
        at = 0
        for conversation in row:
            ids[r, at : at + len(conversation.ids)] = conversation.ids
            mask[r, at : at + len(conversation.ids)] = conversation.mask
            at += len(conversation.ids)
    return Rows(ids, mask)
