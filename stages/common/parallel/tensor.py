"""The tensor-parallel plan for stages.common.model.GPT: Megatron-style column/row splits with
sequence parallelism between blocks (DTensor, torch.distributed.tensor.parallel)."""

from __future__ import annotations

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
from stages.common.parallel.mesh import Mesh


def tensor_parallel(model: GPT, mesh: Mesh, first: bool, last: bool, loss_parallel: bool) -> None:
    """Split `model` over the mesh's tp axis; `first`/`last`: it holds the embedding / the head
    (a whole model holds both; a pipeline stage may hold one or neither).

    The residual stream stays a DTensor sharded on the sequence (Shard(1)), so `model.forward`
    sees the global sequence length for its RoPE tables. Attention and the MLP gather the
    sequence, run on local head/width shards, and reduce-scatter back. Attention itself runs on
    local tensors because SDPA does not accept DTensors on CPU. With `loss_parallel` the head's
    logits stay sharded on the vocabulary (the loss must run under `compute(loss_parallel=True)`,
    see compute.py): no rank ever holds (batch, time, vocab). Without it they are gathered into a
    plain tensor on every rank."""
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
