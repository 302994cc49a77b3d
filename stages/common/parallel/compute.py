"""The numerics around a forward pass: bf16 autocast, and the vocab-parallel loss when the logits
are sharded (tensor parallel with loss_parallel): cross-entropy and its backward then run on the
vocabulary shards. The losses that come out are made plain tensors again with `plain`."""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel


def compute(device: torch.device, bf16: bool, sharded_logits: bool) -> contextlib.ExitStack:
    """Enter around forward, loss and backward."""
    contexts = contextlib.ExitStack()
    if bf16:
        contexts.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if sharded_logits:
        contexts.enter_context(loss_parallel())
    return contexts


def plain(value: torch.Tensor) -> torch.Tensor:
    """A loss (or any reduced value) as a plain tensor, whole on every rank."""
    return value.full_tensor() if isinstance(value, DTensor) else value
