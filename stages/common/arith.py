"""Arithmetic word problems with worked answers: the verifiable task family SFT teaches and RL rewards.

A problem is a short story of 1-3 operations on whole numbers. Its worked answer shows one line
per operation and ends with the line `Answer: <integer>`; `parse_answer` accepts exactly that
last line and nothing looser, so a reward can never be earned by a number buried mid-text.
Problems are a pure function of (seed, index): SFT, RL and eval regenerate the same ones.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kira", "Leo", "Mina", "Noah")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells", "cards", "stamps")
ANSWER_LINE = re.compile(r"Answer: (-?\d+)")


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[str, ...]  # one worked line per operation
    answer: int

    @property
    def solution(self) -> str:
        return "\n".join((*self.steps, f"Answer: {self.answer}"))

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.solution}]


def _operation(rng: random.Random, name: str, item: str, total: int) -> tuple[str, str, int]:
    """One more sentence of the story, its worked line and the new total."""
    kind = rng.choice(("gain", "lose", "times") if total <= 50 else ("gain", "lose"))
    if kind == "gain":
        n = rng.randint(1, 30)
        return f"Then {name} gets {n} more {item}.", f"{total} + {n} = {total + n}", total + n
    if kind == "lose" and total > 1:
        n = rng.randint(1, total - 1)
        return f"Then {name} gives away {n} {item}.", f"{total} - {n} = {total - n}", total - n
    n = rng.randint(2, 4)
    return f"Then {name} ends up with {n} times as many {item}.", f"{total} * {n} = {total * n}", total * n


def make_problem(seed: int, index: int, max_steps: int = 3) -> Problem:
    rng = random.Random(f"arith-{seed}-{index}")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, 40)
    story, steps = [f"{name} has {total} {item}."], []
    for _ in range(rng.randint(1, max_steps)):
        sentence, step, total = _operation(rng, name, item, total)
        story.append(sentence)
        steps.append(step)
    story.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(story), tuple(steps), total)


def problems(seed: int, count: int, start: int = 0, max_steps: int = 3) -> list[Problem]:
    return [make_problem(seed, index, max_steps) for index in range(start, start + count)]


def parse_answer(text: str) -> int | None:
    """The integer of a reply whose last non-empty line is exactly `Answer: <integer>`, else None."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = ANSWER_LINE.fullmatch(lines[-1])
    return int(match.group(1)) if match else None


def reward(problem: Problem, reply: str) -> float:
    """1.0 for a correct, well-formed final answer; 0.0 otherwise."""
    return float(parse_answer(reply) == problem.answer)
