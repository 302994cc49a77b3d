"""The tokenizer stage's section of the report card: how well its vocabulary compresses each split,
beside GPT-2's on the same text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline.report_blocks import Block, Table, Text, fmt
from pipeline.stage import StageReport


def compression_section(_folder: Path, metrics: Mapping[str, float]) -> list[Block]:
    splits = [k.removesuffix("_bytes_per_token") for k in metrics if k.endswith("_bytes_per_token")]
    splits = [s for s in splits if not s.endswith("_gpt2")]
    rows = [
        [
            split,
            fmt(metrics.get(f"{split}_documents")),
            fmt(metrics.get(f"{split}_tokens")),
            fmt(metrics.get(f"{split}_bytes_per_token")),
            fmt(metrics.get(f"{split}_gpt2_bytes_per_token")),
            fmt(metrics.get(f"{split}_compression_vs_gpt2")),
        ]
        for split in splits
    ]
    facts = [f"Vocabulary {fmt(metrics.get('vocab_size'))} tokens"]
    if "train_mb" in metrics:
        facts.append(f"trained on {metrics['train_mb']:.2f} MB in {metrics.get('train_seconds', 0):.1f} s")
    note = Text(
        "; ".join(facts) + ". Bytes per token: higher compresses better; the last column is ours "
        "divided by GPT-2's vocabulary on the same text (above 1: ours compresses better)."
    )
    columns = ["split", "documents", "tokens", "bytes/token", "GPT-2 bytes/token", "vs GPT-2"]
    return [note, Table(columns, rows)]


SECTION = StageReport("Tokenizer compression", compression_section)
