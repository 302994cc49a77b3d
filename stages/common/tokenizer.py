"""The tokenizer every stage reads text through: a byte-level BPE served by `tiktoken`.

A tokenizer folder holds `tokenizer.tiktoken` (one `base64(token) rank` line per mergeable
token, tiktoken's own format) and `tokenizer.json` (split pattern, special tokens, a checksum
of the ranks file). Special tokens sit right after the mergeable ranks. Text is always encoded
as ordinary text: a special-token string typed by a user stays plain text, so only code can
emit control tokens (the prompt-injection guard).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken

# GPT-4's (cl100k) split pattern: letters, up to 3 digits, punctuation runs and whitespace apart.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BOS = "<|bos|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS,
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)
RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer.json"
FORMAT_VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer folder that is missing, corrupt or inconsistent."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class Tokenizer:
    encoding: tiktoken.Encoding
    specials: Mapping[str, int]  # special-token string -> id

    # -- building ------------------------------------------------------------------
    @classmethod
    def from_ranks(
        cls,
        ranks: Mapping[bytes, int],
        pattern: str = GPT4_PATTERN,
        name: str = "z2h",
        specials: Mapping[str, int] | None = None,
    ) -> Tokenizer:
        """Ranks must be dense (0..n-1) and cover all 256 single bytes; specials default to n, n+1, ..."""
        check_ranks(ranks)
        if specials is None:
            specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
        check_specials(specials, len(ranks))
        try:
            encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=dict(ranks), special_tokens=specials)
        except Exception as exc:  # tiktoken reports a bad pattern from deep inside its Rust core
            raise TokenizerError(f"tiktoken rejected the tokenizer (pattern {pattern!r}): {exc}") from exc
        return cls(encoding, specials)

    # -- text <-> ids --------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def bos_id(self) -> int:
        return self.specials[BOS]

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def special(self, token: str) -> int:
        return self.specials[token]

    def encode(self, text: str) -> list[int]:
        """Ordinary text only: special-token strings inside `text` never become specials."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def encode_array(self, text: str) -> np.ndarray:
        """Like `encode`, as a uint32 array without a Python list in between (the fast path).

        With no special token allowed and none disallowed, tiktoken's core encodes every
        special-token string as plain text, exactly as `encode_ordinary` does."""
        return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    # -- files ---------------------------------------------------------------------
    def ranks_file(self) -> bytes:
        """The `.tiktoken` file: one `base64(token) rank` line per mergeable token, by rank."""
        ranks = self.encoding._mergeable_ranks  # tiktoken keeps no public accessor
        lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in sorted(ranks.items(), key=_by_rank)]
        return ("\n".join(lines) + "\n").encode()

    def digest(self) -> str:
        """Identifies the tokenizer's behaviour: ranks, split pattern and special tokens."""
        meta = json.dumps([self.encoding._pat_str, sorted(self.specials.items())]).encode()
        return hashlib.sha256(self.ranks_file() + meta).hexdigest()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        data = self.ranks_file()
        (folder / RANKS_FILE).write_bytes(data)
        meta = {
            "format": FORMAT_VERSION,
            "name": self.encoding.name,
            "pattern": self.encoding._pat_str,
            "mergeable_ranks": len(self.encoding._mergeable_ranks),
            "special_tokens": dict(self.specials),
            "ranks_sha256": hashlib.sha256(data).hexdigest(),
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def _by_rank(item: tuple[bytes, int]) -> int:
    return item[1]


def check_ranks(ranks: Mapping[bytes, int]) -> None:
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError("mergeable ranks must be the dense range 0..n-1")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"mergeable ranks lack {len(missing)} single bytes (first: {missing[0]})")


def check_specials(specials: Mapping[str, int], n_ranks: int) -> None:
    ids = sorted(specials.values())
    if BOS not in specials or ids != list(range(n_ranks, n_ranks + len(ids))):
        raise TokenizerError(f"special tokens must include {BOS} and take ids {n_ranks}.., got {dict(specials)}")


def read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file, naming the first bad line instead of failing deep in tiktoken."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except (ValueError, binascii.Error):
            got = line[:60]
            raise TokenizerError(f"{path.name} line {number}: expected 'base64-token rank', got {got!r}") from None
        if not token or token in ranks:
            raise TokenizerError(f"{path.name} line {number}: empty or repeated token")
        ranks[token] = rank
    return ranks


def load(folder: Path | str) -> Tokenizer:
    """Load a tokenizer folder written by `Tokenizer.save`, offline; every inconsistency is a TokenizerError."""
    folder = Path(folder)
    meta_path, ranks_path = folder / META_FILE, folder / RANKS_FILE
    for path in (meta_path, ranks_path):
        if not path.is_file():
            raise TokenizerError(f"tokenizer folder {folder} has no {path.name}")
    try:
        meta = json.loads(meta_path.read_text())
        pattern, specials, expected = meta["pattern"], meta["special_tokens"], meta["ranks_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenizerError(f"{meta_path}: unreadable tokenizer metadata ({exc})") from None
    if hashlib.sha256(ranks_path.read_bytes()).hexdigest() != expected:
        raise TokenizerError(f"{ranks_path}: checksum differs from {META_FILE}; the file is corrupt or was edited")
    if not isinstance(specials, dict) or not all(isinstance(i, int) for i in specials.values()):
        raise TokenizerError(f"{meta_path}: special_tokens must map strings to ids")
    return Tokenizer.from_ranks(read_ranks(ranks_path), pattern, meta.get("name", "z2h"), specials)
