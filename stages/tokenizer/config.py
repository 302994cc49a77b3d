"""The `stages.tokenizer` config section."""

from __future__ import annotations

import tiktoken
from pydantic import Field, field_validator

from pipeline.stage import StageConfig, cosmetic
from stages.common.tokenizer import GPT4_PATTERN, SPECIAL_TOKENS

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


class TokenizerConfig(StageConfig):
    vocab_size: int = Field(8192, ge=MIN_VOCAB, description="mergeable tokens + special tokens")
    pattern: str = Field(GPT4_PATTERN, description="pre-tokenizer split regex (default: GPT-4's)")
    train_max_chars: int = Field(20_000_000, ge=1, description="characters of training-split text to train on")
    train_doc_max_chars: int = Field(10_000, ge=1, description="at most this many characters from each document")
    val_fraction: float = Field(0.01, ge=0.0, lt=1.0, description="documents held out for validation, by id hash")
    shard_tokens: int = Field(50_000_000, ge=1, description="a new shard starts once a shard holds this many tokens")
    tasks: int = cosmetic(2, "parallel Ray encoding tasks; shards are identical for any number", ge=1)
    cpus_per_task: float = cosmetic(1.0, "CPUs each encoding task holds", ge=0)
    chunk_chars: int = cosmetic(1_000_000, "characters of documents sent to one encoding task at a time", ge=1)
    compare_max_chars: int = cosmetic(
        2_000_000, "characters per split encoded with GPT-2's vocabulary too; 0: skip", ge=0
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        # Compiled by tiktoken's own regex engine (the one rustbpe uses too), not Python's.
        try:
            tiktoken.Encoding(
                "check", pat_str=value, mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={}
            )
        except ValueError as exc:
            raise ValueError(f"split pattern does not compile: {exc}") from None
        return value
