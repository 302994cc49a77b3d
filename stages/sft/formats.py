"""Rows in OpenAI messages or ShareGPT format -> one conversation shape (`role`/`content` messages).

Both formats land on the same messages, so the chat template renders them identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

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


def detect(row: Mapping[str, Any]) -> Literal["openai", "sharegpt"]:
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    raise ConversationError("unknown_format", f"row has neither 'messages' nor 'conversations' (keys {sorted(row)})")


def to_messages(row: Any, fmt: Format = "auto") -> list[dict[str, Any]]:
    """The row's conversation as `{"role", "content"}` messages; roles and contents are checked
    later by the chat template, so every problem is named by the same reasons."""
    if not isinstance(row, Mapping):
        raise ConversationError("not_an_object", f"row is {type(row).__name__}")
    fmt = detect(row) if fmt == "auto" else fmt
    turns = row.get("messages" if fmt == "openai" else "conversations")
    if not isinstance(turns, list):
        raise ConversationError("unknown_format", f"{fmt} row without a list of messages")
    if fmt == "openai":
        return [dict(turn) if isinstance(turn, Mapping) else turn for turn in turns]
    messages = []
    for turn in turns:
        if not isinstance(turn, Mapping):
            messages.append(turn)  # rejected by the template as bad_message
            continue
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower(), speaker) if isinstance(speaker, str) else speaker
        messages.append({"role": role, "content": turn.get("value")})
    return messages
