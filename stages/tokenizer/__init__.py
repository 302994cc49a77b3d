"""Tokenizer stage: byte-level BPE trained on the data stage's documents, served by tiktoken,
and every document encoded into memory-mapped token shards (train / held-out val)."""

from pipeline.stage import Resources, Stage
from stages.tokenizer.config import TokenizerConfig
from stages.tokenizer.report import SECTION
from stages.tokenizer.run import HEADLINE, run


def resources(cfg: TokenizerConfig) -> Resources:
    # One task: the stage task encodes by itself. More: it coordinates that many Ray tasks.
    return Resources(cpus=cfg.cpus_per_task, workers=cfg.tasks)


stage = Stage(
    name="tokenizer",
    config_model=TokenizerConfig,
    run=run,
    needs=("data",),
    resources=resources,
    headline=HEADLINE,
    report=SECTION,
    description="train a byte-level BPE (GPT-4 split, chat special tokens) and encode documents into token shards",
)
