"""Eval stage: the models the config names (base, SFT, RL: any subset), measured with the same settings, in
one table. It needs only the tokenizer and those model stages, so a base-only eval runs without SFT or RL.
Talking to the models (`z2h chat`, `z2h sample`) lives outside the DAG, in `use/`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.budget import Budget
from pipeline.stage import Resources, Stage, deferred
from stages.common import budget as estimate
from stages.eval.config import EvalConfig
from stages.eval.inputs import benchmark_files
from stages.eval.report import SECTION


def resources(cfg: EvalConfig) -> Resources:
    # The stage task prepares the items and reads the results; the eval tasks hold the CPUs.
    return Resources(cpus=cfg.cpus_per_worker, gpus=cfg.gpus_per_worker, workers=cfg.workers)


def needs(cfg: EvalConfig) -> tuple[str, ...]:
    return ("tokenizer", *cfg.models)


def budget(cfg: EvalConfig, pipeline: Any, upstream: Mapping[str, Budget]) -> Budget:
    """Scored tokens (held-out windows, every option of every multiple-choice item) for every model, and
    replies (task answers, adherence prompts) for the chat models; a benchmark without `count` scores its
    whole split, whose size is known only when it is read."""
    choice = ", ".join(f"{name} {count}" for name, count in cfg.choice.items())
    tasks = ", ".join(f"{name} {spec.count}" for name, spec in cfg.tasks.items())
    suite = ", ".join(f"{name} {spec.count or 'all'}" for name, spec in cfg.benchmarks.items())
    details = f"models {'/'.join(cfg.models)}; bpb {cfg.bpb_windows} windows; tasks: {tasks}"
    details += (f"; choice: {choice}" if choice else "") + (f"; benchmarks (CORE): {suite}" if suite else "")
    gpt = next(filter(None, (estimate.upstream_model(upstream, name) for name in cfg.models)), None)
    if gpt is None:
        return Budget(details=details)
    items = sum(cfg.choice.values()) * estimate.CHOICE_OPTIONS * estimate.CHOICE_TOKENS
    items += sum(
        (spec.count or 0) * estimate.CHOICE_OPTIONS * estimate.CHOICE_TOKENS * (1 + spec.fewshot)
        for spec in cfg.benchmarks.values()
    )
    scored = (cfg.bpb_windows * gpt.seq_len + items) * len(cfg.models)
    chats = len([name for name in cfg.models if name != "pretrain"])
    replies = chats * (sum(spec.count for spec in cfg.tasks.values()) + cfg.adherence_prompts)
    generated = replies * cfg.max_new_tokens + len(cfg.models) * cfg.samples * cfg.sample_tokens
    flops = estimate.forward_flops(gpt, scored + generated)
    on_gpu = cfg.gpus_per_worker > 0
    memory = estimate.inference_memory(
        gpt, batch=cfg.batch_size, context=gpt.seq_len, bf16=False, score=True, on_gpu=on_gpu
    )
    hardware = pipeline.cluster.hardware
    seconds = None
    if hardware is not None and on_gpu:
        gpus = cfg.workers * cfg.gpus_per_worker
        decode = estimate.decode_seconds(
            gpt, hardware, sequences=replies, new_tokens=cfg.max_new_tokens, batch=cfg.batch_size, gpus=cfg.workers
        )
        seconds = hardware.gpu_seconds(estimate.forward_flops(gpt, scored), gpus) + decode
    return Budget(
        details=details,
        tokens=scored + generated,
        flops=flops,
        memory_gb=memory.gb,
        memory_parts=memory.parts,
        on_gpu=on_gpu,
        seconds=seconds,
    )


stage = Stage(
    name="eval",
    config_model=EvalConfig,
    run=deferred("stages.eval.run:run"),
    needs=needs,
    resources=resources,
    report=SECTION,
    inputs=benchmark_files,
    description="bits per byte, multiple choice and standard benchmarks (CORE) by likelihood, task accuracy and "
    "chat format for base/SFT/RL",
    budget=budget,
)
