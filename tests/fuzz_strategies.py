"""Hypothesis strategies for outside data: any text (lone surrogates and NULs included), any JSON
value, rows in each format a reader takes (often usable, so the keep path is exercised too), and
lines of arbitrary bytes."""

from __future__ import annotations

import json

import pyarrow as pa
from hypothesis import strategies as st

# Every code point, surrogates too: JSON escapes can spell them, and readers must cope.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=12
)
WORDS = st.sampled_from(["What is 2 + 2?", "Answer: 4", "#### 4", "hello", " ", "", "\x00", "\ud800", "é"])
# Text a usable row would hold, or any text at all.
TEXT = st.text("abc xyz 0123456789?.\n", min_size=1, max_size=30) | WORDS | ANY_TEXT
ROLES = st.sampled_from(["system", "user", "assistant", "human", "gpt", "robot"]) | ANY_TEXT
RAW_LINE = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))


def _turns(role_key: str, text_key: str, speakers: tuple[str, str]) -> st.SearchStrategy:
    """A conversation that alternates two speakers, or turns of any shape."""
    alternating = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=2).map(
        lambda pairs: [
            {role_key: speaker, text_key: text} for pair in pairs for speaker, text in zip(speakers, pair, strict=True)
        ]
    )
    anything = st.lists(st.fixed_dictionaries({role_key: ROLES, text_key: TEXT | JSON}) | JSON, max_size=4)
    return alternating | anything


OPENAI_ROW = st.fixed_dictionaries({"messages": _turns("role", "content", ("user", "assistant"))})
SHAREGPT_ROW = st.fixed_dictionaries({"conversations": _turns("from", "value", ("human", "gpt"))})
BOTH_ROW = st.builds(lambda a, b: a | b, OPENAI_ROW, SHAREGPT_ROW)
CONVERSATION_ROW = OPENAI_ROW | SHAREGPT_ROW | BOTH_ROW | JSON
NUMBER = st.integers(-(10**6), 10**6).map(str) | st.sampled_from(["1,234", "$5", "2.50", "7 apples", "x", ""])
GSM8K_ROW = (
    st.fixed_dictionaries(
        {"question": TEXT | JSON, "answer": st.builds("{}\n#### {}".format, TEXT, NUMBER | TEXT) | TEXT | JSON}
    )
    | JSON
)
TEXT_ROW = st.fixed_dictionaries({"text": TEXT | JSON, "id": TEXT | JSON, "url": TEXT | JSON}) | JSON
# A parquet string as the bytes a file holds: mostly UTF-8 text, sometimes not (Arrow does not check).
PARQUET_STRING = st.none() | TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")) | st.binary(max_size=20)


def _as_binary(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_string(kind):
        return pa.binary()
    if pa.types.is_list(kind):
        return pa.list_(_as_binary(kind.value_type))
    if pa.types.is_struct(kind):
        return pa.struct([(field.name, _as_binary(field.type)) for field in kind])
    return kind


def unchecked_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """`rows` of byte strings as a table of `schema`'s strings, unchecked, as a parquet file from elsewhere may be."""
    columns = [pa.array([row[field.name] for row in rows], _as_binary(field.type)).view(field.type) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def jsonl_lines(rows: st.SearchStrategy) -> st.SearchStrategy:
    """Lines of a JSONL file: rows as JSON (lone surrogates as `\\udXXX` escapes), now and then a
    row that repeats a key, and lines of arbitrary bytes."""
    row_line = rows.map(lambda row: json.dumps(row).encode())
    twice = rows.filter(lambda row: isinstance(row, dict) and row).map(_repeat_a_key)
    return st.lists(st.one_of(row_line, row_line, row_line, twice, RAW_LINE), max_size=8)


def _repeat_a_key(row: dict) -> bytes:
    key = next(iter(row))
    return json.dumps(row)[:-1].encode() + b", " + json.dumps(key).encode() + b": null}"


def rows_in(lines: list[bytes]) -> int:
    """How many rows a JSONL reader sees in these lines: every line that is not blank."""
    return sum(1 for line in lines if line.strip())
