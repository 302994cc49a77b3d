"""Keys and values of every attention layer for a batch of left-padded sequences.

Row b starts with `pads[b]` padding slots, so every row's newest token sits in the same slot and
one decode step appends one column for the whole batch. A token's RoPE position is its slot minus
the row's padding. The mask lets a query see the real keys up to its own slot; a padding query
also sees itself, so its (discarded) output stays finite and never turns masked values into NaN.

Rows may also join a running batch (`join`: the shorter side gains left padding so the newest
tokens line up again) and the slots that have become padding in every row can be dropped
(`compact`), so a batch that never empties still fits the model's context.
"""

from __future__ import annotations

import torch

from stages.common.model import GPTConfig


class KVCache:
    def __init__(self, cfg: GPTConfig, pads: torch.Tensor, capacity: int):
        if capacity > cfg.seq_len:
            raise ValueError(f"cache capacity {capacity} exceeds the model's seq_len {cfg.seq_len}")
        self.cfg = cfg
        self.pads = pads
        self.capacity = capacity
        self.length = 0  # slots filled in every row
        self.mask: torch.Tensor | None = None  # (batch, 1, new, length + new), set by begin()
        self.keys: torch.Tensor | None = None  # (layers, batch, kv_heads, capacity, head_dim)
        self.values: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return len(self.pads)

    def begin(self, new: int) -> torch.Tensor:
        """Prepare a forward pass over `new` more slots; returns their RoPE positions (batch, new)."""
        if self.length + new > self.capacity:
            raise ValueError(f"cache full: {self.length} + {new} slots > capacity {self.capacity}")
        device = self.pads.device
        slots = torch.arange(self.length, self.length + new, device=device)
        keys = torch.arange(self.length + new, device=device)
        visible = (keys >= self.pads[:, None, None]) & (keys <= slots[:, None])
        self.mask = (visible | (keys == slots[:, None])).unsqueeze(1)
        return (slots - self.pads[:, None]).clamp(min=0)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values (batch, kv_heads, new, head_dim); return all so far."""
        if self.keys is None or self.values is None:
            shape = (self.cfg.n_layer, self.batch, k.shape[1], self.capacity, k.shape[3])
            self.keys = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.values = torch.zeros(shape, dtype=v.dtype, device=v.device)
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def commit(self, new: int) -> None:
        self.length += new

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row not in `rows` (finished sequences stop costing compute)."""
        self.pads = self.pads[rows]
        if self.keys is not None and self.values is not None:
            self.keys = self.keys[:, rows]
            self.values = self.values[:, rows]

    def join(self, other: KVCache) -> None:
        """Append the rows of `other` (filled by its own forward pass), shifting whichever side holds
        fewer slots to the right so every row's newest token sits in the same slot again."""
        if self.keys is None or other.keys is None or self.values is None or other.values is None:
            raise ValueError("join needs two caches that have both run a forward pass")
        length = max(self.length, other.length)
        if length > self.capacity:
            raise ValueError(f"cache full: joining {other.length} slots > capacity {self.capacity}")

        def placed(tensor: torch.Tensor, filled: int) -> torch.Tensor:
            shape = (*tensor.shape[:3], self.capacity, tensor.shape[4])
            out = tensor.new_zeros(shape)
            out[:, :, :, length - filled : length] = tensor[:, :, :, :filled]
            return out

        self.keys = torch.cat([placed(self.keys, self.length), placed(other.keys, other.length)], dim=1)
        self.values = torch.cat([placed(self.values, self.length), placed(other.values, other.length)], dim=1)
        self.pads = torch.cat([self.pads + (length - self.length), other.pads + (length - other.length)])
        self.length = length

    def compact(self) -> None:
        """Drop the leading slots that are padding in every row; the rest keep their RoPE positions."""
        drop = int(self.pads.min()) if self.batch else self.length
        if drop == 0:
            return
        kept = self.length - drop
        for tensor in (self.keys, self.values):
            if tensor is not None:
                tensor[:, :, :, :kept] = tensor[:, :, :, drop : self.length].clone()
        self.pads = self.pads - drop
        self.length = kept
