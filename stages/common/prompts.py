"""Prompt ids for one text, as a model is asked to continue it: a user turn of the chat template
(chat models) or a plain document opening (base models), cut from its start when it must fit a
context. Eval, `z2h chat` and `z2h sample` build their prompts here, so they ask alike."""

from __future__ import annotations

from collections.abc import Callable

from stages.common.chat import render_prompt
from stages.common.tokenizer import Tokenizer


class TooLong(ValueError):
    """The text cannot fit the room even when cut down."""


def chat_prompt(tokenizer: Tokenizer) -> Callable[[str], list[int]]:
    """text -> the chat template's prompt for one user turn, ready for the assistant's reply."""
    return lambda text: render_prompt(tokenizer, [{"role": "user", "content": text}])


def text_prompt(tokenizer: Tokenizer) -> Callable[[str], list[int]]:
    """text -> `<|bos|>` + its tokens: a plain document opening for the base model."""
    return lambda text: [tokenizer.bos_id, *tokenizer.encode(text)]


def fit_text(make: Callable[[str], list[int]], body: str, tokenizer: Tokenizer, room: int) -> tuple[list[int], bool]:
    """`make(text)` ids with `body` cut from its start until they fit in `room` tokens; whether it was cut."""
    ids = make(body)
    if len(ids) <= room:
        return ids, False
    tokens = tokenizer.encode(body)
    overhead = len(ids) - len(tokens)
    keep = room - overhead
    while keep > 0:
        ids = make(tokenizer.decode(tokens[len(tokens) - keep :]))
        if len(ids) <= room:
            return ids, True
        keep -= max(1, len(ids) - room)  # re-encoding the cut text can merge differently: trim more
    raise TooLong(f"{room} tokens leave no room for the text")
