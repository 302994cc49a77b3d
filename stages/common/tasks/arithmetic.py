"""Arithmetic word problems with worked answers, generated from a seed: the task the SFT stage
teaches, and RL and eval measure, in the format it teaches (`Answer: <n>`).

A problem is a short story of 1-3 operations on whole numbers. Its worked solution shows one line
per operation and ends with the line `Answer: <integer>`; the reward reads only that final line
(`answers.same_number`), so it can never be earned by a number buried mid-text. Problems are a
pure function of (seed, index): SFT, RL and eval regenerate the same ones.

Difficulty: `max_steps` (operations per problem, 1-3 in SFT's data), `min_steps`, and `max_number`
(keep only problems whose every number, operands and results, is at most this). `balanced` (needs
`max_number`) takes equally many problems of each answer 1..max_number: the generator's answers are
skewed (a fifth of the problems of numbers <= 10 have the answer 1), and on a skewed set a policy
gains accuracy by answering the commonest number without reading the problem. Splits are
disjoint index ranges of the same generator: `train` from 0 (the problems SFT's arithmetic data
uses), `heldout` from 10^9, which no run ever reaches from 0.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from stages.common.tasks.answers import same_number
from stages.common.tasks.base import Problem, Split, Task, check_split

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kira", "Leo", "Mina", "Noah")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells", "cards", "stamps")
HELDOUT_START = 10**9
DEFAULT_COUNT = 1000


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
    """Problem `index` of the generator seeded with `seed`: the story, its worked solution and answer."""
    rng = random.Random(f"arith-{seed}-{index}")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, 40)
    story, steps = [f"{name} has {total} {item}."], []
    for _ in range(rng.randint(1, max_steps)):
        sentence, step, total = _operation(rng, name, item, total)
        story.append(sentence)
        steps.append(step)
    story.append(f"How many {item} does {name} have now?")
    return Problem(
        id=f"arith-{seed}-{index}-{max_steps}",  # the index and max_steps make the problem
        prompt=" ".join(story),
        answer=str(total),
        solution="\n".join((*steps, f"Answer: {total}")),
    )


class ArithTask(Task):
    name = "arith"

    def __init__(self, max_steps: int = 3, min_steps: int = 1, max_number: int | None = None, balanced: bool = False):
        super().__init__()
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"arith: need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        if max_number is not None and max_number < 4:
            raise ValueError(f"arith: max_number must be >= 4 (problems start with 2..40 items), got {max_number}")
        if balanced and max_number is None:
            raise ValueError("arith: balanced needs max_number (the answers to balance are 1..max_number)")
        self.max_steps, self.min_steps, self.max_number = max_steps, min_steps, max_number
        self.balanced = balanced

    def options(self) -> dict[str, int | bool | None]:
        return {
            "max_steps": self.max_steps,
            "min_steps": self.min_steps,
            "max_number": self.max_number,
            "balanced": self.balanced,
        }

    def _fits(self, made: Problem) -> bool:
        steps = made.solution.count("\n")  # one worked line per operation, then the answer line
        if steps < self.min_steps:
            return False
        if self.max_number is None:
            return True
        return all(int(n) <= self.max_number for n in re.findall(r"\d+", made.solution))

    def source(self) -> str:
        return str(Path(__file__).resolve())

    def problems(self, split: Split, count: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        count = DEFAULT_COUNT if count is None else count
        index = HELDOUT_START if split == "heldout" else 0
        quota = self._quota(count)
        chosen: list[Problem] = []
        while len(chosen) < count:
            made = make_problem(seed, index, self.max_steps)
            if self._fits(made) and (quota is None or quota[made.answer] > 0):
                chosen.append(made)
                if quota is not None:
                    quota[made.answer] -= 1
            index += 1
        return chosen

    def _quota(self, count: int) -> dict[str, int] | None:
        """Problems still wanted per answer when balanced: count / max_number each, the remainder going
        to the smallest answers."""
        if not self.balanced:
            return None
        assert self.max_number is not None
        share, extra = divmod(count, self.max_number)
        return {str(answer): share + (answer <= extra) for answer in range(1, self.max_number + 1)}

    def reward(self, problem: Problem, reply: str) -> float:
        return same_number(reply, problem.answer)
