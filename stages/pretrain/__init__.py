"""Pretrain stage: a GPT trained on the tokenizer stage's shards by a Ray Train worker group
with a (pp, dp, tp) mesh: pipeline, FSDP2 data and DTensor tensor parallelism."""

from typing import Any

from pipeline.stage import Resources, Stage
from stages.pretrain.config import PretrainConfig
from stages.pretrain.run import HEADLINE, run


def resources(cfg: PretrainConfig) -> Resources:
    # TP groups share a node (TP innermost): the runner checks the cluster holds whole groups.
    return Resources(cpus=cfg.cpus_per_worker, gpus=cfg.gpus_per_worker, workers=cfg.world, group=cfg.tp)


def summary(cfg: PretrainConfig, pipeline: Any) -> str:
    """Mesh, model size, token budget and training-state memory per worker, for `z2h plan`.

    The vocabulary is the tokenizer section's `vocab_size` when the pipeline has one."""
    tokenizer = pipeline.stages.get("tokenizer")
    vocab = getattr(tokenizer, "vocab_size", None) or 65_536
    gpt = cfg.model.gpt(vocab)
    params = gpt.num_params()
    # fp32 weights + grads + two Adam moments = 16 bytes a parameter, sharded over every rank
    # (FSDP over dp, DTensor over tp, layers over pp); activations come on top.
    state_gb = 16 * params / cfg.world / 1e9
    tokens = cfg.max_steps * cfg.batch_tokens
    return (
        f"mesh pp{cfg.pp}xdp{cfg.dp}xtp{cfg.tp}; {params / 1e6:.1f}M params "
        f"({gpt.num_params(embedding=False) / 1e6:.1f}M non-embedding, vocab {vocab}); "
        f"{tokens / 1e6:.1f}M tokens = {cfg.max_steps} steps x {cfg.batch_tokens}; "
        f"{gpt.flops_per_token() * tokens:.2e} FLOPs; train state {state_gb:.2f} GB/worker"
    )


stage = Stage(
    name="pretrain",
    config_model=PretrainConfig,
    run=run,
    needs=("tokenizer",),
    resources=resources,
    headline=HEADLINE,
    summary=summary,
    description="GPT pretraining on Ray Train with pipeline, data (FSDP2) and tensor parallelism; DCP checkpoints",
)
