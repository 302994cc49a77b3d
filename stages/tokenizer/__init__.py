"""Tokenizer stage: byte-level BPE trained on the data stage's documents, served by tiktoken,
and every document encoded into memory-mapped token shards (train / held-out val)."""

from collections.abc import Mapping
from typing import Any

from pipeline.budget import GB, Budget, amount
from pipeline.stage import Resources, Stage, deferred
from stages.common import budget as estimate
from stages.tokenizer.config import TokenizerConfig
from stages.tokenizer.report import SECTION

HEADLINE = ("train_tokens", "val_bytes_per_token", "val_compression_vs_gpt2")


def resources(cfg: TokenizerConfig) -> Resources:
    # One task: the stage task encodes by itself. More: it coordinates that many Ray tasks.
    return Resources(cpus=cfg.cpus_per_task, workers=cfg.tasks)


def budget(cfg: TokenizerConfig, pipeline: Any, upstream: Mapping[str, Budget]) -> Budget:
    """BPE training on at most `train_max_chars` of the data stage's text (one process), then every document
    encoded by `tasks` tasks; sizes follow the data stage's estimate of the text it keeps."""
    text = upstream["data"].output.get("text_bytes") if "data" in upstream else None
    train_chars = cfg.train_max_chars if text is None else min(cfg.train_max_chars, text)
    memory = 1.0 + train_chars * estimate.BPE_BYTES_PER_CHAR / GB
    details = f"BPE of {cfg.vocab_size} tokens on <= {amount(train_chars)} chars; {cfg.tasks} encoding task(s)"
    if text is None:
        return Budget(details=details, memory_gb=memory, memory_parts="BPE training")
    tokens = text / estimate.bytes_per_token(cfg.vocab_size)
    seconds = train_chars / 1e6 * estimate.BPE_TRAIN_S_PER_MB
    seconds += estimate.cpu_seconds(text / 1e6 / estimate.ENCODE_MB_PER_S, cfg.tasks)
    return Budget(
        details=details + f"; ~{estimate.bytes_per_token(cfg.vocab_size):.1f} bytes a token",
        data_bytes=text,
        tokens=tokens,
        memory_gb=memory,
        memory_parts="BPE training: the text and its pre-token counts",
        seconds=seconds,
        output={"train_tokens": tokens * (1 - cfg.val_fraction)},
    )


stage = Stage(
    name="tokenizer",
    config_model=TokenizerConfig,
    run=deferred("stages.tokenizer.run:run"),
    needs=("data",),
    resources=resources,
    headline=HEADLINE,
    report=SECTION,
    budget=budget,
    description="train a byte-level BPE (GPT-4 split, chat special tokens) and encode documents into token shards",
)
