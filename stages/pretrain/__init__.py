"""Pretrain stage: a GPT trained on the tokenizer stage's shards by a Ray Train worker group
with a (pp, dp, tp) mesh: pipeline, FSDP2 data and DTensor tensor parallelism."""

from collections.abc import Mapping
from typing import Any

from pipeline.budget import Budget
from pipeline.stage import Resources, Stage, deferred
from stages.common import budget as estimate
from stages.pretrain.config import PretrainConfig

HEADLINE = ("val_loss", "val_unigram_loss", "val_bpb", "train_loss", "tokens_per_s", "mfu")


def resources(cfg: PretrainConfig) -> Resources:
    # TP groups share a node (TP innermost): the runner checks the cluster holds whole groups.
    return Resources(cpus=cfg.cpus_per_worker, gpus=cfg.gpus_per_worker, workers=cfg.world, group=cfg.tp)


def budget(cfg: PretrainConfig, pipeline: Any, upstream: Mapping[str, Budget]) -> Budget:
    """Mesh, model size, token budget, FLOPs and the peak memory of the busiest rank, for `z2h plan`.

    The vocabulary is the tokenizer section's `vocab_size` when the pipeline has one. Under a pipeline the
    first rank holds up to `pp` (1F1B) or every (GPipe) microbatch of `micro_batch / pp_microbatches` rows."""
    tokenizer = pipeline.stages.get("tokenizer")
    gpt = cfg.model.gpt(getattr(tokenizer, "vocab_size", None) or 65_536)
    tokens = cfg.max_steps * cfg.batch_tokens
    rows, in_flight = cfg.micro_batch, 1
    if cfg.pp > 1:
        rows = cfg.micro_batch // cfg.pp_microbatches
        in_flight = cfg.pp_microbatches if cfg.pp_schedule == "gpipe" else min(cfg.pp, cfg.pp_microbatches)
    on_gpu = cfg.gpus_per_worker > 0
    memory = estimate.training_memory(
        gpt,
        micro_tokens=rows * gpt.seq_len,
        shards=cfg.world if cfg.dp_mode == "fsdp" else cfg.tp * cfg.pp,
        tp=cfg.tp,
        pp=cfg.pp,
        in_flight=in_flight,
        bf16=cfg.precision == "bf16",
        checkpointing=cfg.activation_checkpointing,
        on_gpu=on_gpu,
    )
    flops = gpt.flops_per_token() * tokens
    available = upstream["tokenizer"].output.get("train_tokens") if "tokenizer" in upstream else None
    passes = f"; ~{tokens / available:.1f} passes over the data" if available else ""
    hardware = pipeline.cluster.hardware
    return Budget(
        details=f"mesh pp{cfg.pp}xdp{cfg.dp}xtp{cfg.tp}; {estimate.model_line(gpt)}, "
        f"{gpt.num_params(embedding=False) / 1e6:.1f}M non-embedding, vocab {gpt.vocab_size}; "
        f"{cfg.max_steps} steps x {cfg.batch_tokens} tokens{passes}",
        data_bytes=tokens * (2 if gpt.vocab_size <= 65_536 else 4),  # uint16 shards when the ids fit
        tokens=tokens,
        steps=cfg.max_steps,
        flops=flops,
        memory_gb=memory.gb,
        memory_parts=memory.parts,
        on_gpu=on_gpu,
        seconds=estimate.gpu_time(hardware, flops, cfg.world * cfg.gpus_per_worker) if on_gpu else None,
        output={"model": gpt},
    )


stage = Stage(
    name="pretrain",
    config_model=PretrainConfig,
    run=deferred("stages.pretrain.run:run"),
    needs=("tokenizer",),
    resources=resources,
    headline=HEADLINE,
    budget=budget,
    description="GPT pretraining on Ray Train with pipeline, data (FSDP2) and tensor parallelism; DCP checkpoints",
)
