"""BPE training: rustbpe's merges equal a plain-Python reference trainer's, and the three
encoders (reference, rustbpe's own, tiktoken) agree token for token on held-out text."""

from __future__ import annotations

from collections import Counter

import pytest
import regex
import rustbpe
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tokenizer_data import doc_texts

from stages.common.tokenizer import GPT4_PATTERN, SPECIAL_TOKENS
from stages.tokenizer.config import TokenizerConfig
from stages.tokenizer.train import dedupe, train_ranks, train_tokenizer


def reference_merges(texts: list[str], n_ranks: int, pattern: str = GPT4_PATTERN) -> list[tuple[int, int]]:
    """Textbook BPE: pre-tokens weighted by count, every adjacent pair counted (overlaps too),
    the most frequent pair merged left to right, ties to the smallest (left id, right id)."""
    words = Counter(tuple(piece.encode()) for text in texts for piece in regex.findall(pattern, text))
    pieces = [list(word) for word in words]
    weights = list(words.values())
    merges: list[tuple[int, int]] = []
    while 256 + len(merges) < n_ranks:
        pairs: Counter[tuple[int, int]] = Counter()
        for piece, weight in zip(pieces, weights, strict=True):
            for pair in zip(piece, piece[1:], strict=False):
                pairs[pair] += weight
        if not pairs:
            break
        best = max(pairs.values())
        pair = min(p for p, count in pairs.items() if count == best)
        new_id = 256 + len(merges)
        merges.append(pair)
        for piece in pieces:
            i = 0
            while i < len(piece) - 1:
                if (piece[i], piece[i + 1]) == pair:
                    piece[i : i + 2] = [new_id]
                i += 1
    return merges


def merge_tokens(merges: list[tuple[int, int]]) -> list[bytes]:
    vocab = [bytes([b]) for b in range(256)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    return vocab[256:]


def reference_encode(text: str, merges: list[tuple[int, int]], pattern: str = GPT4_PATTERN) -> list[bytes]:
    """Apply the merges in rank order to each pre-token; returns the tokens' bytes."""
    rank = {pair: 256 + i for i, pair in enumerate(merges)}
    tokens = merge_tokens(merges)
    out: list[bytes] = []
    for piece in regex.findall(pattern, text):
        ids = list(piece.encode())
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:], strict=False), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            i = next(i for i in range(len(ids) - 1) if (ids[i], ids[i + 1]) == pair)
            ids[i : i + 2] = [rank[pair]]
        out += [bytes([i]) if i < 256 else tokens[i - 256] for i in ids]
    return out


def learned(ranks: dict[bytes, int]) -> list[bytes]:
    return [token for token, _ in sorted(ranks.items(), key=lambda item: item[1])][256:]


SMALL = [
    ["aaaa aaa aa a"],
    ["abab abab ba ba", "ab"],
    ["hello hello world", "héllo wörld", "1234567 12 123"],
    ["the cat sat on the mat; the dog sat on the log!\n\n  indented   text\t\ttabs"],
    ["", "x"],
]


@pytest.mark.parametrize("texts", SMALL)
def test_same_merges_as_reference_on_small_texts(texts: list[str]) -> None:
    ranks, dropped = train_ranks(texts, 300)
    assert dropped == 0
    assert learned(ranks) == merge_tokens(reference_merges(texts, 300))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab c1é\n", max_size=40), min_size=1, max_size=6), st.integers(257, 300))
def test_same_merges_as_reference_on_random_texts(texts: list[str], n_ranks: int) -> None:
    ranks, _ = train_ranks(texts, n_ranks)
    assert learned(ranks) == merge_tokens(reference_merges(texts, n_ranks))


def test_same_merges_as_reference_on_real_text() -> None:
    texts = doc_texts()[:12]
    ranks, _ = train_ranks(texts, 256 + 150)
    assert learned(ranks) == merge_tokens(reference_merges(texts, 256 + 150))
    assert all(ranks[bytes([b])] == b for b in range(256))


def test_encoders_agree_on_held_out_text() -> None:
    texts = doc_texts()
    train, held_out = texts[:60], texts[-40:]
    n_ranks = 1000
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(train), n_ranks)
    tokenizer, dropped = train_tokenizer(train, n_ranks + len(SPECIAL_TOKENS))
    assert dropped == 0
    merges = reference_merges(train[:8], 400)
    small, _ = train_tokenizer(train[:8], 400 + len(SPECIAL_TOKENS))
    for text in held_out:
        ids = tokenizer.encode(text)
        assert ids == trainer.encode(text)  # no merge was dropped, so ids are identical
        assert [small.encoding.decode_single_token_bytes(i) for i in small.encode(text)] == reference_encode(
            text, merges
        )


def test_dedupe_drops_repeated_spellings_and_closes_ranks() -> None:
    pairs = [([b], b) for b in range(256)] + [(list(b"ab"), 256), (list(b"abc"), 257), (list(b"abc"), 258)]
    pairs.append((list(b"cd"), 259))
    ranks, dropped = dedupe(pairs)
    assert dropped == 1
    assert ranks[b"abc"] == 257 and ranks[b"cd"] == 258 and len(ranks) == 259


def test_vocab_smaller_than_bytes_plus_specials_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="vocab_size"):
        TokenizerConfig(vocab_size=256 + len(SPECIAL_TOKENS) - 1)
    assert TokenizerConfig(vocab_size=256 + len(SPECIAL_TOKENS)).vocab_size == 265


def test_bad_split_pattern_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="does not compile"):
        TokenizerConfig(pattern="(unclosed")


def test_training_on_a_tiny_corpus_stops_early() -> None:
    tokenizer, _ = train_tokenizer(["ab ab ab"], 4096)
    assert tokenizer.vocab_size < 4096
    assert tokenizer.decode(tokenizer.encode("ab ab")) == "ab ab"
