"""SFT stage: finetune the pretrained model on assistant conversations (loss on assistant tokens
only) under Ray Train on pretraining's mesh code (FSDP2 or DDP over dp, tensor parallelism over
tp), and measure that it answers in the chat format."""

from pipeline.stage import Resources, Stage
from stages.sft.config import SFTConfig
from stages.sft.run import HEADLINE, run


def resources(cfg: SFTConfig) -> Resources:
    # The stage task only prepares data and coordinates; the Ray Train workers hold the CPUs.
    # TP groups share a node (TP innermost): the runner checks the cluster holds whole groups.
    return Resources(cpus=cfg.cpus_per_worker, gpus=cfg.gpus_per_worker, workers=cfg.workers, group=cfg.tp)


stage = Stage(
    name="sft",
    config_model=SFTConfig,
    run=run,
    needs=("pretrain", "tokenizer"),
    resources=resources,
    headline=HEADLINE,
    description="supervised finetuning on chat conversations (ShareGPT + arithmetic), loss on assistant tokens",
)
