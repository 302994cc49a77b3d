"""Text from outside the project: one test of whether a string can be hashed, written and tokenized.

A Python str may hold lone surrogates, which JSON escapes (`"\\ud800"`) and `surrogateescape`
decoding produce: they are not Unicode text, UTF-8 cannot carry them, and hashing, writing or
tokenizing such a string fails or silently changes it. NUL characters are valid Unicode but mark
binary data, end strings in C tools downstream and become invisible tokens. Readers of outside data
reject strings with either, counted under the reason `problem` names; the tokenizer stage, which
reads documents the data stage already checked, repairs them instead (`repair`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INVALID_UNICODE = "invalid_unicode"  # lone surrogates: no UTF-8 encoding exists
NUL_CHARACTER = "nul_character"


def problem(text: str) -> str | None:
    """Why `text` cannot be used as text (INVALID_UNICODE or NUL_CHARACTER), or None when it can."""
    if "\x00" in text:
        return NUL_CHARACTER
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return INVALID_UNICODE
    return None


def problem_in(value: Any) -> str | None:
    """The problem of the first unusable string anywhere in a parsed value (mapping keys included);
    other types are not text and pass. Iterative, so nesting as deep as a parser allows is fine."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            found = problem(item)
            if found:
                return found
        elif isinstance(item, Mapping):
            todo += item.keys()
            todo += item.values()
        elif isinstance(item, list | tuple):
            todo += item
    return None


def repair(text: str) -> tuple[str, bool]:
    """Text that UTF-8 can carry, and whether it had to change: NUL characters are dropped and
    lone surrogates become U+FFFD."""
    changed = False
    if "\x00" in text:
        text, changed = text.replace("\x00", ""), True
    if problem(text) == INVALID_UNICODE:
        text, changed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), True
    return text, changed
