"""Standard multiple-choice benchmarks as their Hub datasets lay them out, each row mapped to a
`Question`: text a model continues, one way per option, and the gold option.

  format      Hub id (config; labelled split)        fields read
  hellaswag   Rowan/hellaswag (-; validation)        ctx, endings[4], label "0".."3" ("" in test)
  arc         allenai/ai2_arc (ARC-Easy | ARC-       question, choices {text: [...], label: [...]},
              Challenge; test)                       answerKey (a label: "A".."E" or "1".."5")
  piqa        ybisk/piqa (-; validation)             goal, sol1, sol2, label 0 | 1 (-1 in test)
  winogrande  allenai/winogrande (winogrande_xl;     sentence with one "_", option1, option2,
              validation)                            answer "1" | "2" ("" in test)
  mmlu        cais/mmlu (all; test)                  question, choices[4], answer 0..3

A question is asked as plain text (`Question: ...\\nAnswer:` and each option after a space;
HellaSwag's context and endings as they are, with WikiHow's `[header]` tags removed). Winogrande
is scored partially: each option fills the blank in its own context and the rest of the sentence,
the same for every option, is the continuation scored. Rows without a gold label, with a missing
field, options that are not a list of texts or a gold that is not an option are counted per reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.common.rows import BadRow
from stages.common.text import problem_in

SHOTS_DELIMITER = "\n\n"


@dataclass(frozen=True)
class Question:
    """prefixes: one shared context, or one per option (partial scoring); continuations: one per
    option, or one shared. Option i is prefixes[i or 0] continued by continuations[i or 0]."""

    where: str  # file:row in the source, to trace an item back
    prefixes: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int

    @property
    def options(self) -> int:
        return max(len(self.prefixes), len(self.continuations))

    @property
    def partial(self) -> bool:
        return len(self.prefixes) > 1

    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) of every option."""
        return [(self._pick(self.prefixes, i), self._pick(self.continuations, i)) for i in range(self.options)]

    def solved(self) -> str:
        """The question answered with its gold option: a few-shot example."""
        context, continuation = self.pairs()[self.gold]
        return context + continuation

    def after(self, shots: list[str]) -> Question:
        """The question preceded by solved examples."""
        lead = "".join(shot + SHOTS_DELIMITER for shot in shots)
        return Question(self.where, tuple(lead + p for p in self.prefixes), self.continuations, self.gold)

    @staticmethod
    def _pick(values: tuple[str, ...], index: int) -> str:
        return values[index] if len(values) > 1 else values[0]


Parsed = tuple[tuple[str, ...], tuple[str, ...], int]  # prefixes, continuations, gold


def _texts(value: Any) -> list[str] | None:
    """A list of two or more non-empty strings, else None."""
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) and v.strip() for v in value):
        return None
    return [v.strip() for v in value]


def _no_gold(value: Any) -> bool:
    """No label: missing, empty (a test split's "") or -1 (a test split's ClassLabel)."""
    return value is None or str(value).strip() in ("", "-1")


def _index(value: Any, count: int) -> int | BadRow:
    """A gold given as an int or a digit string, checked against the number of options."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return BadRow("gold_not_an_option", repr(value)[:80])
    return value if 0 <= value < count else BadRow("gold_not_an_option", f"{value} of {count} options")


def _question(text: str) -> str:
    return f"Question: {text.strip()}\nAnswer:"


def _hellaswag_text(text: str) -> str:
    """WikiHow contexts carry `[title]`, `[header]`, `[step]` tags: a title ends a sentence, the rest go."""
    text = re.sub(r"\[[^\]]*\]", "", text.strip().replace(" [title]", ". "))
    return re.sub(r"\s{2,}", " ", text).strip()


def hellaswag(row: dict[str, Any]) -> Parsed | BadRow:
    endings = _texts(row["endings"])
    if _no_gold(row["label"]):
        return BadRow("no_gold", f"label {row['label']!r}")
    if endings is None or not isinstance(row["ctx"], str) or not row["ctx"].strip():
        return BadRow("malformed_options", "needs a text `ctx` and a list of text `endings`")
    gold = _index(row["label"], len(endings))
    if isinstance(gold, BadRow):
        return gold
    return (_hellaswag_text(row["ctx"]),), tuple(" " + _hellaswag_text(e) for e in endings), gold


def arc(row: dict[str, Any]) -> Parsed | BadRow:
    choices, key = row["choices"], row["answerKey"]
    if _no_gold(key):
        return BadRow("no_gold", f"answerKey {key!r}")
    texts = _texts(choices.get("text")) if isinstance(choices, dict) else None
    given = choices.get("label") if isinstance(choices, dict) else None
    labels = [str(label) for label in given] if isinstance(given, list) else []
    if texts is None or len(labels) != len(texts) or not isinstance(row["question"], str):
        return BadRow("malformed_options", "needs a text `question` and `choices` {text: [...], label: [...]}")
    if str(key).strip() not in labels:
        return BadRow("gold_not_an_option", f"answerKey {key!r} not in {labels}")
    return (_question(row["question"]),), tuple(" " + t for t in texts), labels.index(str(key).strip())


def piqa(row: dict[str, Any]) -> Parsed | BadRow:
    if _no_gold(row["label"]):
        return BadRow("no_gold", f"label {row['label']!r}")
    options = _texts([row["sol1"], row["sol2"]])
    if options is None or not isinstance(row["goal"], str) or not row["goal"].strip():
        return BadRow("malformed_options", "needs text `goal`, `sol1` and `sol2`")
    gold = _index(row["label"], 2)
    if isinstance(gold, BadRow):
        return gold
    return (_question(row["goal"]),), tuple(" " + o for o in options), gold


def winogrande(row: dict[str, Any]) -> Parsed | BadRow:
    if _no_gold(row["answer"]):
        return BadRow("no_gold", f"answer {row['answer']!r}")
    sentence, options = row["sentence"], _texts([row["option1"], row["option2"]])
    if options is None or not isinstance(sentence, str) or sentence.count("_") != 1:
        return BadRow("malformed_options", "needs a `sentence` with one `_` and text `option1`, `option2`")
    before, _, after = sentence.partition("_")
    if not after.strip():
        return BadRow("malformed_options", "nothing after the blank to score")
    answer = str(row["answer"]).strip()
    if answer not in ("1", "2"):
        return BadRow("gold_not_an_option", f"answer {row['answer']!r}")
    return tuple(before + o for o in options), (after.rstrip(),), int(answer) - 1


def mmlu(row: dict[str, Any]) -> Parsed | BadRow:
    if _no_gold(row["answer"]):
        return BadRow("no_gold", f"answer {row['answer']!r}")
    choices = _texts(row["choices"])
    if choices is None or not isinstance(row["question"], str) or not row["question"].strip():
        return BadRow("malformed_options", "needs a text `question` and a list of text `choices`")
    gold = _index(row["answer"], len(choices))
    if isinstance(gold, BadRow):
        return gold
    return (_question(row["question"]),), tuple(" " + c for c in choices), gold


@dataclass(frozen=True)
class Format:
    title: str | None  # the table's name for it (None: the config's name, as ARC-Easy)
    hub: str
    config: str | None
    split: str  # a split with gold labels (test splits of several benchmarks hide them)
    fewshot_split: str
    columns: tuple[str, ...]  # fields every row must have
    parse: Callable[[dict[str, Any]], Parsed | BadRow]


FORMATS: dict[str, Format] = {
    "hellaswag": Format(
        "HellaSwag", "Rowan/hellaswag", None, "validation", "train", ("ctx", "endings", "label"), hellaswag
    ),
    "arc": Format(None, "allenai/ai2_arc", "ARC-Easy", "test", "train", ("question", "choices", "answerKey"), arc),
    "piqa": Format("PIQA", "ybisk/piqa", None, "validation", "train", ("goal", "sol1", "sol2", "label"), piqa),
    "winogrande": Format(
        "Winogrande",
        "allenai/winogrande",
        "winogrande_xl",
        "validation",
        "train",
        ("sentence", "option1", "option2", "answer"),
        winogrande,
    ),
    "mmlu": Format("MMLU", "cais/mmlu", "all", "test", "dev", ("question", "choices", "answer"), mmlu),
}


def parse_row(form: Format, where: str, row: Any) -> Question | BadRow:
    """A question, or why the row is unusable."""
    if not isinstance(row, dict):
        return BadRow("not_an_object", type(row).__name__)
    missing = [c for c in form.columns if c not in row]
    if missing:
        return BadRow("missing_field", f"no {missing[0]!r}")
    bad_text = problem_in(row)
    if bad_text:
        return BadRow(bad_text)
    parsed = form.parse(row)
    if isinstance(parsed, BadRow):
        return parsed
    return Question(where, *parsed)
