"""The one chat template: conversations -> token ids and a loss mask, shared by SFT, RL, eval and chat.

A conversation is a list of `{"role": "system" | "user" | "assistant", "content": str}` messages.
Rendered (nanochat's format):

    <|bos|> <|user_start|> text <|user_end|> <|assistant_start|> text <|assistant_end|> <|user_start|> ...

System text policy: the special-token set has no system tokens, so a leading system message is
folded into the first user turn as `system text + "\n\n" + user text`. Folding keeps the vocabulary
fixed and the model sees the instruction where it reads the request. A system message anywhere but
first is rejected (`system_not_first`).

The loss mask is 1 exactly on the tokens the model must learn to produce: assistant text and the
`<|assistant_end|>` that closes it; everything else (bos, user text, role markers,
`<|assistant_start|>`) is 0. `mask[i]` belongs to `ids[i]`: a trainer predicts `ids[i]` from
`ids[:i]` and counts the loss where `mask[i] == 1`.

Text is always encoded as ordinary text, so a user typing `<|assistant_end|>` cannot forge a turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from stages.common.tokenizer import BOS, Tokenizer

ROLES = ("system", "user", "assistant")
USER_START, USER_END = "<|user_start|>", "<|user_end|>"
ASSISTANT_START, ASSISTANT_END = "<|assistant_start|>", "<|assistant_end|>"
SYSTEM_SEPARATOR = "\n\n"
Truncation = Literal["drop", "truncate"]


class ConversationError(ValueError):
    """A conversation the template cannot render; `reason` is a short key for per-reason counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where ids[i] is an assistant token or <|assistant_end|>
    truncated: bool = False

    @property
    def loss_tokens(self) -> int:
        return sum(self.mask)


def normalize(messages: Sequence[Mapping[str, object]], *, for_generation: bool = False) -> list[tuple[str, str]]:
    """(role, text) turns that strictly alternate user, assistant, ... with the system text folded in.

    A training conversation must end with an assistant turn; one rendered for generation must end
    with a user turn (the model writes the next assistant turn). Raises ConversationError."""
    turns: list[tuple[str, str]] = []
    system: str | None = None
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ConversationError("bad_message", f"message {position} is {type(message).__name__}, not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ConversationError("unknown_role", f"message {position} has role {role!r}")
        if not isinstance(content, str):
            raise ConversationError("non_string_content", f"message {position} content is {type(content).__name__}")
        if not content.strip():
            raise ConversationError("empty_content", f"message {position} ({role}) is empty")
        if role == "system":
            if position != 0:
                raise ConversationError("system_not_first", f"system message at position {position}")
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError("not_alternating", f"message {position} is {role}, expected {expected}")
        turns.append((role, content))
    if not turns:
        raise ConversationError("no_turns", "no user or assistant message")
    last = turns[-1][0]
    if for_generation and last != "user":
        raise ConversationError("ends_without_user_turn", "a prompt must end with a user message")
    if not for_generation and last != "assistant":
        raise ConversationError("ends_without_assistant_turn", "the last message is not from the assistant")
    if system is not None:
        turns[0] = ("user", system + SYSTEM_SEPARATOR + turns[0][1])
    return turns


def _render_turns(tokenizer: Tokenizer, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    ids, mask = [tokenizer.special(BOS)], [0]
    for role, text in turns:
        body = tokenizer.encode(text)
        if role == "user":
            ids += [tokenizer.special(USER_START), *body, tokenizer.special(USER_END)]
            mask += [0] * (len(body) + 2)
        else:
            ids += [tokenizer.special(ASSISTANT_START), *body, tokenizer.special(ASSISTANT_END)]
            mask += [0] + [1] * (len(body) + 1)
    return ids, mask


def render(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, object]],
    max_tokens: int | None = None,
    truncation: Truncation = "drop",
) -> Rendered:
    """Ids and loss mask of a whole conversation (for training).

    Over `max_tokens`: "drop" raises ConversationError("too_long"); "truncate" keeps the first
    `max_tokens` tokens (marked `truncated`) as long as some assistant token survives, since a
    window without one teaches nothing; otherwise it also raises "too_long"."""
    ids, mask = _render_turns(tokenizer, normalize(messages))
    if max_tokens is None or len(ids) <= max_tokens:
        return Rendered(ids, mask)
    if truncation == "truncate" and any(mask[:max_tokens]):
        return Rendered(ids[:max_tokens], mask[:max_tokens], truncated=True)
    raise ConversationError("too_long", f"{len(ids)} tokens > {max_tokens}")


def render_prompt(tokenizer: Tokenizer, messages: Sequence[Mapping[str, object]]) -> list[int]:
    """Ids of a conversation ending in a user turn, followed by `<|assistant_start|>`: the model's
    next tokens are the assistant's reply, which ends when it emits `<|assistant_end|>`."""
    ids, _ = _render_turns(tokenizer, normalize(messages, for_generation=True))
    return [*ids, tokenizer.special(ASSISTANT_START)]


def prompt_and_reply(messages: Sequence[Mapping[str, object]]) -> tuple[list[dict[str, str]], str]:
    """Split a training conversation into the prompt before its last assistant turn and that turn's text."""
    turns = list(messages)
    last = turns[-1]
    return [dict(m) for m in turns[:-1]], str(last["content"])
