"""A saved model folder (`config.json` + `model.safetensors`), the tokenizer it was trained with, and
the refusal when a model and a tokenizer do not belong together.

A model folder does not name its tokenizer; the store does: an entry's manifest lists its upstream
fingerprints, and walking them from a model's entry reaches the tokenizer entry it was trained with
(`sft -> tokenizer`, `rl -> sft -> ... -> tokenizer`). A tokenizer folder saved next to the model
(`<model>/tokenizer` or `<entry>/tokenizer`) wins when present. The tokenizer's fingerprint is its
digest (ranks, split pattern and special tokens) and vocabulary size; two tokenizers with the same
digest encode every text the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.common.model_config import CONFIG_FILE, WEIGHTS_FILE, GPTConfig
from stages.common.tokenizer import META_FILE, Tokenizer, load

MANIFEST = "manifest.json"  # a store entry's record, written last when the entry is committed


class TokenizerMismatch(ValueError):
    """A model and a tokenizer that were not trained together."""


def is_model_folder(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def read_manifest(entry: Path) -> dict:
    """A store entry's manifest, or {} when it has none or it cannot be read."""
    try:
        return json.loads((Path(entry) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def fingerprint(tokenizer: Tokenizer) -> str:
    return f"{tokenizer.digest()[:16]} (vocab {tokenizer.vocab_size})"


def recorded_tokenizer(folder: Path) -> Path | None:
    """The tokenizer folder the model in `folder` was trained with, if anything records it."""
    folder = Path(folder).absolute()
    for candidate in (folder / "tokenizer", folder.parent / "tokenizer"):
        if (candidate / META_FILE).is_file():
            return candidate
    entry = folder.parent
    store = entry.parent.parent
    todo, seen = [entry], set()
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        upstream = read_manifest(current).get("upstream") or {}
        if "tokenizer" in upstream:
            found = store / "tokenizer" / upstream["tokenizer"] / "tokenizer"
            return found if (found / META_FILE).is_file() else None
        todo += [store / stage / fp for stage, fp in sorted(upstream.items())]
    return None


def check_tokenizer(folder: Path, tokenizer: Tokenizer, recorded: Path | None = None) -> None:
    """Refuse (TokenizerMismatch, naming both fingerprints) a model trained with another tokenizer,
    or one whose vocabulary does not fit the tokenizer's ids."""
    folder = Path(folder)
    recorded = recorded or recorded_tokenizer(folder)
    vocab = GPTConfig.from_json((folder / CONFIG_FILE).read_text()).vocab_size
    mine = fingerprint(tokenizer)
    if recorded is not None:
        theirs = load(recorded)
        if theirs.digest() != tokenizer.digest():
            raise TokenizerMismatch(
                f"tokenizer mismatch: the model in {folder} was trained with tokenizer {fingerprint(theirs)} "
                f"({recorded}), not {mine}"
            )
        if vocab < tokenizer.vocab_size:
            raise TokenizerMismatch(f"the model in {folder} has {vocab} token ids; tokenizer {mine} needs more")
    elif vocab != tokenizer.vocab_size:
        raise TokenizerMismatch(
            f"tokenizer mismatch: the model in {folder} has {vocab} token ids (no tokenizer recorded), "
            f"tokenizer {mine} has {tokenizer.vocab_size}"
        )
