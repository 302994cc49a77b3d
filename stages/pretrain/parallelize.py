"""Turn one plain GPT into this rank's parallel pieces, torchtitan's order:
pipeline split -> tensor parallel -> activation checkpointing -> compile -> FSDP2 (or DDP).

The model file knows nothing of this. Every rank starts from the same fully initialised model
(`build` draws all weights from one seeded generator, so the weights do not depend on which
layers a rank keeps) and keeps only what its mesh coordinates own.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from stages.common.model import GPT
from stages.pretrain.config import PretrainConfig
from stages.pretrain.mesh import Mesh


def stage_indices(cfg: PretrainConfig, pp_rank: int) -> list[int]:
    """Pipeline stages this pp rank runs: one, or every pp-th for interleaved (looped) schedules."""
    return list(range(pp_rank, cfg.n_stages, cfg.pp))


def pipeline_piece(full: GPT, stage: int, layers: list[range]) -> GPT:
    """A deep copy of `full` keeping only stage `stage`'s contiguous layers (`layers[stage]`);
    the embedding lives on the first stage, final norm and head on the last. Layer keys keep
    their global index, so parameter names are the same on every mesh (checkpoints reshard)."""
    piece = copy.deepcopy(full)
    n_stages = len(layers)
    keep = {str(i) for i in layers[stage]}
    for name in list(piece.layers):
        if name not in keep:
            del piece.layers[name]
    if stage > 0:
        piece.tok_embeddings = None
    if stage < n_stages - 1:
        piece.norm = None
        piece.output = None
    return piece


def tensor_parallel(model: GPT, mesh: Mesh, first: bool, last: bool, loss_parallel: bool) -> None:
    """Megatron-style column/row splits with sequence parallelism between blocks.

    The residual stream stays a DTensor sharded on the sequence (Shard(1)), so `model.forward`
    sees the global sequence length for its RoPE tables. Attention and the MLP gather the
    sequence, run on local head/width shards, and reduce-scatter back. Attention itself runs on
    local tensors because SDPA does not accept DTensors on CPU. With `loss_parallel` the head's
    logits stay sharded on the vocabulary (the loss runs under `loss_parallel()`, see engine.py):
    no rank ever holds (batch, time, vocab)."""
    tp = mesh.sub("tp")
    plan: dict[str, object] = {}
    if first:
        plan["tok_embeddings"] = RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False
        )
    if last:
        plan["norm"] = SequenceParallel(use_local_output=False)
        plan["output"] = ColwiseParallel(
            input_layouts=Shard(1),
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel,
        )
    for name, block in model.layers.items():
        prefix = f"layers.{name}."
        plan[prefix + "attn_norm"] = SequenceParallel(use_local_output=False)
        plan[prefix + "attn"] = PrepareModuleInput(
            input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None)
        )
        for proj in ("wq", "wk", "wv"):
            plan[prefix + f"attn.{proj}"] = ColwiseParallel()
        if block.attn.q_norm is not None:
            # QK-norm acts per head on local head shards (dim 1); its weights stay replicated and
            # their gradients are summed over the TP ranks by DTensor.
            plan[prefix + "attn.q_norm"] = SequenceParallel(sequence_dim=1, use_local_output=True)
            plan[prefix + "attn.k_norm"] = SequenceParallel(sequence_dim=1, use_local_output=True)
        plan[prefix + "attn.wo"] = RowwiseParallel(output_layouts=Shard(1), use_local_output=False)
        plan[prefix + "mlp_norm"] = SequenceParallel(use_local_output=False)
        plan[prefix + "mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        plan[prefix + "mlp.w1"] = ColwiseParallel()
        if block.mlp.w3 is not None:
            plan[prefix + "mlp.w3"] = ColwiseParallel()
        plan[prefix + "mlp.w2"] = RowwiseParallel(output_layouts=Shard(1), use_local_output=False)
    parallelize_module(model, tp, plan)
    # Pipeline sends plain tensors between stages: unwrap at a stage's end, rewrap at the next's start.
    if not first:
        parallelize_module(
            model,
            tp,
            PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),), use_local_output=False),
        )
    if not last:
        parallelize_module(
            model,
            tp,
            PrepareModuleOutput(output_layouts=Shard(1), desired_output_layouts=Shard(1), use_local_output=True),
        )


def wrap_blocks(model: GPT, cfg: PretrainConfig) -> None:
    """Activation checkpointing and compilation per block (names stay loadable: DCP's state-dict
    helpers strip the checkpoint wrapper's prefix, and `Module.compile` adds none)."""
    for name in list(model.layers):
        block = model.layers[name]
        if cfg.activation_checkpointing:
            block = checkpoint_wrapper(block)
        if cfg.compile:
            block.compile()
        model.layers[name] = block


def data_parallel(model: GPT, mesh: Mesh, cfg: PretrainConfig) -> None:
    """FSDP2 over the dp axis, one unit per block plus the rest. Under pipelining, keep gathered
    weights between microbatches instead of re-gathering them for each. `dp_mode: ddp` replicates
    the model instead (composable DDP: parameter names stay those of the plain model)."""
    dp = mesh.sub("dp")
    if cfg.dp_mode == "ddp":
        replicate(model, device_mesh=dp)
        return
    reshard = cfg.pp == 1
    for block in model.layers.values():
        fully_shard(block, mesh=dp, reshard_after_forward=reshard)
    fully_shard(model, mesh=dp, reshard_after_forward=reshard)


def parallelize(full: GPT, cfg: PretrainConfig, mesh: Mesh) -> list[tuple[int, GPT]]:
    """(stage index, module) for each pipeline stage this rank runs; one entry without PP."""
    if mesh.device_mesh is None:
        wrap_blocks(full, cfg)
        return [(0, full.to(mesh.device))]
    pieces = []
    for stage in stage_indices(cfg, mesh.coordinate("pp")):
        piece = pipeline_piece(full, stage, cfg.stage_layers()) if cfg.pp > 1 else full
        piece.to(mesh.device)
        if cfg.tp > 1:
            last = stage == cfg.n_stages - 1
            tensor_parallel(piece, mesh, first=stage == 0, last=last, loss_parallel=cfg.loss_parallel)
        wrap_blocks(piece, cfg)
        if cfg.dp > 1:
            data_parallel(piece, mesh, cfg)
        pieces.append((stage, piece))
    return pieces


def parameters(parts: list[tuple[int, nn.Module]]) -> list[nn.Parameter]:
    return [p for _, module in parts for p in module.parameters()]
