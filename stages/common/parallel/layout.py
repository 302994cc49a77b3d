"""Lay one GPT (a whole model, or one pipeline stage of it) over this rank's mesh, torchtitan's
order: tensor parallel -> activation checkpointing -> compile -> FSDP2 (or DDP).

The model file knows nothing of this. Every rank starts from the same full model and keeps what
its mesh coordinates own. Pretraining splits the pipeline first (stages/pretrain/parallelize.py);
SFT and the RL learner lay out whole models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import fully_shard

from stages.common.model import GPT
from stages.common.parallel.checks import DataParallel
from stages.common.parallel.mesh import Mesh
from stages.common.parallel.tensor import tensor_parallel


@dataclass(frozen=True)
class Layout:
    """How a model is spread; the mesh says over how many ranks (dp, tp)."""

    dp_mode: DataParallel = "fsdp"
    loss_parallel: bool = True  # tp > 1: the head's logits stay sharded on the vocabulary
    activation_checkpointing: bool = False
    compile: bool = False


def wrap_blocks(model: GPT, layout: Layout) -> None:
    """Activation checkpointing and compilation per block (names stay loadable: DCP's state-dict
    helpers strip the checkpoint wrapper's prefix, and `Module.compile` adds none)."""
    for name in list(model.layers):
        block = model.layers[name]
        if layout.activation_checkpointing:
            block = checkpoint_wrapper(block)
        if layout.compile:
            block.compile()
        model.layers[name] = block


def data_parallel(model: GPT, mesh: Mesh, mode: DataParallel, reshard_after_forward: bool) -> None:
    """FSDP2 over the dp axis, one unit per block plus the rest; or composable DDP (parameter
    names stay those of the plain model either way)."""
    dp = mesh.sub("dp")
    if mode == "ddp":
        replicate(model, device_mesh=dp)
        return
    for block in model.layers.values():
        fully_shard(block, mesh=dp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp, reshard_after_forward=reshard_after_forward)


def parallelize(
    model: GPT, mesh: Mesh, layout: Layout, first: bool = True, last: bool = True, frozen: bool = False
) -> GPT:
    """`model` moved to the mesh's device and laid out in place; `first`/`last`: it holds the
    embedding / the head. A `frozen` model (RL's reference) is sharded under FSDP2 but never
    replicated: DDP would only hang gradient hooks on it."""
    model.to(mesh.device)
    if mesh.tp > 1:
        tensor_parallel(model, mesh, first=first, last=last, loss_parallel=layout.loss_parallel)
    wrap_blocks(model, layout)
    if mesh.dp > 1 and not (frozen and layout.dp_mode == "ddp"):
        # Under pipelining, keep gathered weights between microbatches instead of re-gathering them.
        data_parallel(model, mesh, layout.dp_mode, reshard_after_forward=mesh.pp == 1)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, layout: Layout, sync: bool) -> Iterator[None]:
    """Gradient accumulation: under DDP, all-reduce only on an optimizer step's last micro-batch.
    FSDP2 reduce-scatters every micro-batch: keeping whole gradients until the last would undo
    its sharding."""
    skip = not sync and layout.dp_mode == "ddp" and hasattr(model, "set_requires_gradient_sync")
    if skip:
        model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        if skip:
            model.set_requires_gradient_sync(True)
