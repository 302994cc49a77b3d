"""SFT stage: finetune the pretrained model on assistant conversations (loss on assistant tokens
only) under Ray Train on pretraining's mesh code (FSDP2 or DDP over dp, tensor parallelism over
tp), and measure that it answers in the chat format."""

import math
from collections.abc import Mapping
from typing import Any

from pipeline.budget import Budget
from pipeline.stage import Resources, Stage, deferred
from stages.common import budget as estimate
from stages.sft.config import SFTConfig
from stages.sft.init import PRETRAIN

HEADLINE = ("heldout_loss_before", "heldout_loss_after", "adherence")


def resources(cfg: SFTConfig) -> Resources:
    # The stage task only prepares data and coordinates; the Ray Train workers hold the CPUs.
    # TP groups share a node (TP innermost): the runner checks the cluster holds whole groups.
    return Resources(cpus=cfg.cpus_per_worker, gpus=cfg.gpus_per_worker, workers=cfg.workers, group=cfg.tp)


def needs(cfg: SFTConfig) -> tuple[str, ...]:
    """This run's pretrain stage only when SFT starts from it (`init`)."""
    return ("pretrain", "tokenizer") if cfg.init == PRETRAIN else ("tokenizer",)


def inputs(cfg: SFTConfig) -> dict[str, str]:
    """A base model from elsewhere is part of the fingerprint."""
    start = cfg.starting_point()
    return {} if start is None else {"init": start.identity}


def budget(cfg: SFTConfig, pipeline: Any, upstream: Mapping[str, Budget]) -> Budget:
    """Training tokens, FLOPs and memory per worker on the base model's shape, plus the adherence replies."""
    start = cfg.starting_point()
    gpt = start.model() if start else estimate.upstream_model(upstream, "pretrain")
    sources = ", ".join(
        " ".join([s.name, *filter(None, (s.dataset, s.subset)), f"<= {s.limit:,} rows" if s.limit else ""]).strip()
        for s in cfg.sources
    )
    details = (
        f"from {start.label if start else 'pretrain'}; sources {sources}; mesh dp{cfg.workers // cfg.tp}xtp{cfg.tp}"
    )
    if gpt is None:
        return Budget(details=details)
    seq = cfg.max_seq_len or gpt.seq_len
    rows = cfg.batch_size * cfg.grad_accum * (cfg.workers // cfg.tp)
    tokens = cfg.steps * rows * seq if cfg.steps else None
    on_gpu = cfg.gpus_per_worker > 0
    memory = estimate.training_memory(
        gpt,
        micro_tokens=cfg.batch_size * seq,
        shards=cfg.workers if cfg.dp_mode == "fsdp" else cfg.tp,
        tp=cfg.tp,
        bf16=cfg.bf16,
        on_gpu=on_gpu,
    )
    flops = gpt.flops_per_token() * tokens if tokens else None
    hardware = pipeline.cluster.hardware
    seconds = None
    if hardware is not None and on_gpu and flops:
        replies = estimate.decode_seconds(
            gpt,
            hardware,
            sequences=cfg.adherence_prompts,
            new_tokens=cfg.max_new_tokens,
            batch=math.ceil(cfg.adherence_prompts / cfg.workers),
            gpus=1,
        )
        seconds = hardware.gpu_seconds(flops, cfg.workers * cfg.gpus_per_worker) + replies
    return Budget(
        details=details + f"; {cfg.steps} steps x {rows} rows of {seq} tokens",
        tokens=tokens,
        steps=cfg.steps or None,
        flops=flops,
        memory_gb=memory.gb,
        memory_parts=memory.parts,
        on_gpu=on_gpu,
        seconds=seconds,
        output={"model": gpt},
    )


stage = Stage(
    name="sft",
    config_model=SFTConfig,
    run=deferred("stages.sft.run:run"),
    needs=needs,
    resources=resources,
    headline=HEADLINE,
    inputs=inputs,
    budget=budget,
    description="supervised finetuning on chat conversations (ShareGPT + arithmetic), loss on assistant tokens",
)
