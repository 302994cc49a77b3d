"""Eval stage: every model the run produced (base, SFT, RL), measured with the same settings, in one
table; plus `z2h chat` and `z2h sample` to talk to any of them."""

from __future__ import annotations

import argparse

from pipeline.stage import Resources, Stage, StageCommand
from stages.eval.config import EvalConfig
from stages.eval.run import run


def resources(cfg: EvalConfig) -> Resources:
    # The stage task prepares the items and reads the results; the eval tasks hold the CPUs.
    return Resources(cpus=cfg.cpus_per_worker, gpus=cfg.gpus_per_worker, workers=cfg.workers)


def summary(cfg: EvalConfig, _pipeline) -> str:
    choice = ", ".join(f"{name} {count}" for name, count in cfg.choice.items())
    tasks = ", ".join(f"{name} {spec.count}" for name, spec in cfg.tasks.items())
    return f"models {'/'.join(cfg.models)}; bpb {cfg.bpb_windows} windows; choice: {choice}; tasks: {tasks}"


def _configure_chat(parser: argparse.ArgumentParser) -> None:
    from stages.eval.chat import add_model_args

    add_model_args(parser)


def _run_chat(args: argparse.Namespace) -> int:
    from stages.eval.chat import run_chat

    return run_chat(args)


def _configure_sample(parser: argparse.ArgumentParser) -> None:
    from stages.eval.chat import add_sample_args

    add_sample_args(parser)


def _run_sample(args: argparse.Namespace) -> int:
    from stages.eval.chat import run_sample

    return run_sample(args)


stage = Stage(
    name="eval",
    config_model=EvalConfig,
    run=run,
    needs=("tokenizer", "pretrain", "sft", "rl"),
    resources=resources,
    commands={
        "chat": StageCommand(
            help="chat in the terminal with the latest model (or a run id / model folder); streams tokens",
            configure=_configure_chat,
            run=_run_chat,
        ),
        "sample": StageCommand(
            help="one-shot completions from any stage's model (base: plain text; sft/rl: chat template)",
            configure=_configure_sample,
            run=_run_sample,
        ),
    },
    description="bits per byte, multiple choice by likelihood, task accuracy and chat format for base/SFT/RL",
    summary=summary,
)
