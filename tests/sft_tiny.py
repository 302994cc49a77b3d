"""A tiny tokenizer and a tiny randomly-initialised base model for the chat and SFT tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from pydoc_data.topics import topics

from stages.common import tasks
from stages.common.model import GPTConfig, build, save_pretrained
from stages.common.tokenizer import Tokenizer
from stages.tokenizer.train import train_tokenizer

VOCAB = 512


@cache
def tokenizer() -> Tokenizer:
    """BPE trained on Python's docs and arithmetic problems: small, fast, and it knows digits."""
    texts = [topics[name] for name in sorted(topics)[:80]]
    texts += [p.prompt + "\n" + p.solution for p in tasks.get("arith").problems("train", 300, seed=99)]
    return train_tokenizer(texts, VOCAB)[0]


def write_tokenizer(folder: Path) -> Path:
    tokenizer().save(folder / "tokenizer")
    return folder


def write_base_model(folder: Path, seq_len: int = 128, seed: int = 0) -> Path:
    """A pretrain-stage-like output folder: model/ plus a manifest naming the producing run."""
    cfg = GPTConfig(vocab_size=VOCAB, seq_len=seq_len, n_layer=2, n_head=4, d_model=64)
    save_pretrained(build(cfg, seed=seed), folder / "model")
    (folder / "manifest.json").write_text(json.dumps({"run_id": "none"}))
    return folder


def openai_rows(count: int, seed: int = 3) -> list[dict]:
    return [{"messages": p.conversation()} for p in tasks.get("arith").problems("train", count, seed)]


def write_jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "".join(line + "\n" for line in extra_lines))
    return path
