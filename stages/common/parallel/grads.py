"""Gradient clipping across a (pp, dp, tp) mesh."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from stages.common.parallel.mesh import Mesh


def clip_grad_norm(params: list[nn.Parameter], max_norm: float, mesh: Mesh) -> float:
    """The global gradient norm (over every shard on every rank); scales grads down to `max_norm`
    (0: measure only).

    DTensor norms are reduced over their own mesh (tp, dp); pipeline stages hold disjoint
    parameters, so their squared norms are summed over the pp axis."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = []
    for grad in grads:
        norm = torch.linalg.vector_norm(grad, dtype=torch.float32)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2)
    total = torch.stack(squares).sum() if squares else torch.zeros((), device=mesh.device)
    if mesh.pp > 1:
        dist.all_reduce(total, group=mesh.sub("pp").get_group())
    total_norm = total.sqrt().item()
    if max_norm > 0 and total_norm > max_norm:
        coef = max_norm / (total_norm + 1e-6)
        for grad in grads:
            grad.mul_(coef)
    return total_norm
