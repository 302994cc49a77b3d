"""Eval stage: the models the config names (base, SFT, RL: any subset), measured with the same settings, in
one table. It needs only the tokenizer and those model stages, so a base-only eval runs without SFT or RL.
Talking to the models (`z2h chat`, `z2h sample`) lives outside the DAG, in `use/`."""

from __future__ import annotations

from pipeline.stage import Resources, Stage
from stages.eval.config import EvalConfig
from stages.eval.inputs import benchmark_files
from stages.eval.report import SECTION
from stages.eval.run import run


def resources(cfg: EvalConfig) -> Resources:
    # The stage task prepares the items and reads the results; the eval tasks hold the CPUs.
    return Resources(cpus=cfg.cpus_per_worker, gpus=cfg.gpus_per_worker, workers=cfg.workers)


def needs(cfg: EvalConfig) -> tuple[str, ...]:
    return ("tokenizer", *cfg.models)


def summary(cfg: EvalConfig, _pipeline) -> str:
    choice = ", ".join(f"{name} {count}" for name, count in cfg.choice.items())
    tasks = ", ".join(f"{name} {spec.count}" for name, spec in cfg.tasks.items())
    line = f"models {'/'.join(cfg.models)}; bpb {cfg.bpb_windows} windows; choice: {choice}; tasks: {tasks}"
    return line + (f"; benchmarks: {', '.join(cfg.benchmarks)} (CORE)" if cfg.benchmarks else "")


stage = Stage(
    name="eval",
    config_model=EvalConfig,
    run=run,
    needs=needs,
    resources=resources,
    report=SECTION,
    inputs=benchmark_files,
    description="bits per byte, multiple choice and standard benchmarks (CORE) by likelihood, task accuracy and "
    "chat format for base/SFT/RL",
    summary=summary,
)
