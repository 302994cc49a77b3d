"""Rows in OpenAI messages or ShareGPT format -> one conversation shape (`role`/`content` messages).

Both formats land on the same messages, so the chat template renders them identically. A row is
refused (ConversationError, counted per reason) rather than reinterpreted when its format is a
guess (`ambiguous_format`: both `messages` and `conversations`) or its text is not text that can
be hashed and tokenized as it is (`invalid_unicode`, `nul_character`: see `stages.common.text`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from stages.common import text
from stages.common.chat import ConversationError

Format = Literal["auto", "openai", "sharegpt"]
# ShareGPT speaker names seen in the wild; anything else is an unknown role, counted and skipped.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
KEYS = {"openai": "messages", "sharegpt": "conversations"}


def detect(row: Mapping[str, Any]) -> Literal["openai", "sharegpt"]:
    """The row's format by the key it fills (a column of nulls, as parquet mixes give, is no key)."""
    found = [fmt for fmt, key in KEYS.items() if row.get(key) is not None]
    if len(found) == 2:
        raise ConversationError("ambiguous_format", "row has both 'messages' and 'conversations'")
    if not found:
        raise ConversationError(
            "unknown_format", f"row has neither 'messages' nor 'conversations' (keys {sorted(map(str, row))})"
        )
    return found[0]


def _message(turn: Any, fmt: str) -> Any:
    """One turn as `{"role", "content"}`; a turn that is not an object is passed on for the template to reject."""
    if not isinstance(turn, Mapping):
        return turn
    if fmt == "openai":
        return {"role": turn.get("role"), "content": turn.get("content")}
    speaker = turn.get("from")
    role = SHAREGPT_ROLES.get(speaker.lower(), speaker) if isinstance(speaker, str) else speaker
    return {"role": role, "content": turn.get("value")}


def to_messages(row: Any, fmt: Format = "auto") -> list[Any]:
    """The row's conversation as `{"role", "content"}` messages; roles and contents are checked
    later by the chat template, so every problem is named by the same reasons."""
    if not isinstance(row, Mapping):
        raise ConversationError("not_an_object", f"row is {type(row).__name__}")
    fmt = detect(row) if fmt == "auto" else fmt
    turns = row.get(KEYS[fmt])
    if not isinstance(turns, list):
        raise ConversationError("unknown_format", f"{fmt} row without a list of messages")
    messages = [_message(turn, fmt) for turn in turns]
    bad_text = text.problem_in(messages)
    if bad_text:
        raise ConversationError(bad_text, "a message's role or content")
    return messages
