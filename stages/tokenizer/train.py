"""BPE training with `rustbpe`, exported as tiktoken ranks.

rustbpe splits text with the same regex engine as tiktoken, counts every adjacent pair in
every pre-token (weighted by how often the pre-token occurs), merges the most frequent pair,
and breaks ties towards the smallest (left id, right id). Its token ids are tiktoken ranks:
0..255 are the bytes, 256 + i is the i-th merge.
"""

from __future__ import annotations

from collections.abc import Iterable

import rustbpe

from stages.common.tokenizer import GPT4_PATTERN, SPECIAL_TOKENS, Tokenizer


def train_ranks(texts: Iterable[str], n_ranks: int, pattern: str = GPT4_PATTERN) -> tuple[dict[bytes, int], int]:
    """Up to `n_ranks` mergeable tokens (256 bytes + merges) learned from `texts`, and how many
    merges were dropped because they spelled a token that already existed."""
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), n_ranks, pattern=pattern)
    return dedupe(trainer.get_mergeable_ranks())


def dedupe(pairs: Iterable[tuple[list[int] | bytes, int]]) -> tuple[dict[bytes, int], int]:
    """Dense ranks with one rank per byte string. Two merges can spell the same bytes (a+bc and
    ab+c); tiktoken looks tokens up by bytes, so the later one is dropped and ranks close up,
    keeping their order (the order BPE merges in)."""
    ranks: dict[bytes, int] = {}
    dropped = 0
    for token, _ in sorted(pairs, key=lambda pair: pair[1]):
        token = bytes(token)
        if token in ranks:
            dropped += 1
        else:
            ranks[token] = len(ranks)
    return ranks, dropped


def train_tokenizer(texts: Iterable[str], vocab_size: int, pattern: str = GPT4_PATTERN) -> tuple[Tokenizer, int]:
    """A tokenizer of at most `vocab_size` ids, the special tokens included."""
    ranks, dropped = train_ranks(texts, vocab_size - len(SPECIAL_TOKENS), pattern)
    return Tokenizer.from_ranks(ranks, pattern), dropped
