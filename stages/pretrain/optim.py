"""AdamW, the learning-rate schedule and gradient clipping across a (pp, dp, tp) mesh.

The schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from stages.pretrain.config import PretrainConfig
from stages.pretrain.mesh import Mesh


def build_optimizer(params: list[nn.Parameter], cfg: PretrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices (linear weights, embeddings) only, not on norm gains."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine or linear decay to `min_lr_ratio * lr`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.decay == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(params: list[nn.Parameter], max_norm: float, mesh: Mesh) -> float:
    """The global gradient norm (over every shard on every rank); scales grads down to `max_norm`.

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
