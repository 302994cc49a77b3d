"""Arithmetic word problems from `stages.common.arith`, generated from a seed: the task the SFT
stage teaches, so RL and eval measure the model on the format it learned (`Answer: <n>`).

Difficulty: `max_steps` (operations per problem, 1-3 in SFT's data), `min_steps`, and `max_number`
(keep only problems whose every number, operands and results, is at most this). Splits are
disjoint index ranges of the same generator: `train` from 0 (the range SFT's arithmetic data also
uses), `heldout` from 10^9, which no run ever reaches from 0.
"""

from __future__ import annotations

import re
from pathlib import Path

from stages.common import arith
from stages.common.tasks.answers import same_number
from stages.common.tasks.base import Problem, Split, Task, check_split

HELDOUT_START = 10**9
DEFAULT_COUNT = 1000


class ArithTask(Task):
    name = "arith"

    def __init__(self, max_steps: int = 3, min_steps: int = 1, max_number: int | None = None):
        super().__init__()
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"arith: need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        if max_number is not None and max_number < 4:
            raise ValueError(f"arith: max_number must be >= 4 (problems start with 2..40 items), got {max_number}")
        self.max_steps, self.min_steps, self.max_number = max_steps, min_steps, max_number

    def options(self) -> dict[str, int | None]:
        return {"max_steps": self.max_steps, "min_steps": self.min_steps, "max_number": self.max_number}

    def _fits(self, made: arith.Problem) -> bool:
        if len(made.steps) < self.min_steps:
            return False
        if self.max_number is None:
            return True
        return all(int(n) <= self.max_number for step in made.steps for n in re.findall(r"\d+", step))

    def source(self) -> str:
        return str(Path(arith.__file__).resolve())

    def problems(self, split: Split, count: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        count = DEFAULT_COUNT if count is None else count
        index = HELDOUT_START if split == "heldout" else 0
        chosen: list[Problem] = []
        while len(chosen) < count:
            made = arith.make_problem(seed, index, self.max_steps)
            if self._fits(made):
                chosen.append(
                    Problem(
                        id=f"arith-{seed}-{index}-{self.max_steps}",  # the index and max_steps make the problem
                        prompt=made.question,
                        answer=str(made.answer),
                        solution=made.solution,
                    )
                )
            index += 1
        return chosen

    def reward(self, problem: Problem, reply: str) -> float:
        return same_number(reply, problem.answer)
