"""Sources -> rendered conversations: read, convert the format, render with the chat template,
and count every row that cannot be used under the reason the template or reader gives."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import hub, packages
from stages.common.chat import ConversationError, Rendered, Truncation, render
from stages.common.rows import BadRow, RowStream, Skips
from stages.common.tasks import ArithTask
from stages.common.tokenizer import Tokenizer
from stages.sft.config import SourceConfig
from stages.sft.formats import to_messages
from stages.sft.readers import read_source


@dataclass(frozen=True)
class Example:
    source: str
    key: str  # hash of the conversation's content: the held-out split and dedup key
    messages: list[dict[str, Any]]
    rendered: Rendered


def content_key(messages: list[dict[str, Any]]) -> str:
    """Hash of checked messages (`to_messages` lets no text through that UTF-8 cannot carry)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def source_uri(source: SourceConfig) -> str:
    """Where a source's rows come from, as MLflow records a dataset's source."""
    if source.kind == "arith":
        return ArithTask().source()  # generated: the generator is the source
    if source.path:
        return str(Path(source.path).resolve())
    if source.kind == "hf":
        return hub.source_uri(source.dataset or "", source.subset, source.split)
    return packages.SHAREGPT.url


def _arith_rows(source: SourceConfig, seed: int) -> RowStream:
    made = ArithTask(max_steps=source.max_steps, max_number=source.max_number).problems("train", source.count, seed)
    for index, problem in enumerate(made):
        yield f"arith[{index}]", {"messages": problem.conversation()}


def longest_reply(rendered: Rendered) -> int:
    """Tokens in the longest assistant turn, its <|assistant_end|> included (the longest run of loss tokens)."""
    longest = run = 0
    for flag in rendered.mask:
        run = run + 1 if flag else 0
        longest = max(longest, run)
    return longest


def load_examples(
    source: SourceConfig,
    tokenizer: Tokenizer,
    max_tokens: int,
    truncation: Truncation,
    seed: int,
    cache: Path,
    skips: Skips,
) -> tuple[list[Example], int]:
    """The source's usable conversations (duplicates dropped) and how many of them were truncated."""
    rows = _arith_rows(source, seed) if source.kind == "arith" else read_source(source, cache)
    kept: list[Example] = []
    seen: set[str] = set()
    truncated = 0
    for index, (where, row) in enumerate(rows):
        if source.limit is not None and index >= source.limit:
            break
        if isinstance(row, BadRow):
            skips.add(row.reason, where, row.detail)
            continue
        try:
            messages = to_messages(row, source.format)
            rendered = render(tokenizer, messages, max_tokens, truncation)
        except ConversationError as exc:
            skips.add(exc.reason, where, str(exc))
            continue
        if source.max_reply_tokens is not None and (longest := longest_reply(rendered)) > source.max_reply_tokens:
            skips.add("reply_too_long", where, f"an assistant turn of {longest} tokens > {source.max_reply_tokens}")
            continue
        key = content_key(messages)
        if key in seen:
            skips.add("duplicate", where, "same messages as an earlier row")
            continue
        seen.add(key)
        truncated += rendered.truncated
        kept.append(Example(source.name, key, messages, rendered))
    return kept, truncated
