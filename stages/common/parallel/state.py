"""Whole weights out of a laid-out model: for rollout actors, generation and export.

FSDP2 and tensor parallelism leave each rank a shard of every weight (DTensors); these gather
them back. Every rank of the mesh must call them together (they are collectives).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from stages.common.model import GPT, build
from stages.common.parallel.mesh import Mesh


def full_state(model: nn.Module, mesh: Mesh, everywhere: bool) -> dict[str, torch.Tensor]:
    """Every weight, whole, under the plain model's names. `everywhere`: on every rank, on its
    device; otherwise rank 0 gets them in CPU memory and the other ranks an empty dict."""
    if mesh.device_mesh is None:
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))


def plain_copy(model: GPT, mesh: Mesh, everywhere: bool) -> GPT | None:
    """A plain GPT on this rank's device with `model`'s weights (None off rank 0 unless
    `everywhere`). A single process's model is plain already and comes back as is."""
    if mesh.device_mesh is None:
        return model
    state = full_state(model, mesh, everywhere)
    if not (everywhere or mesh.is_logger):
        return None
    copy = build(model.cfg, seed=0, device=mesh.device)
    copy.load_state_dict(state)
    return copy
