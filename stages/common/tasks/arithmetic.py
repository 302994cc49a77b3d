"""Arithmetic word problems from `stages.common.arith`, generated from a seed: the task the SFT
stage teaches, so RL and eval measure the model on the format it learned (`Answer: <n>`).

Difficulty: `max_steps` (operations per problem, 1-3 in SFT's data) and `min_steps`. Splits are
disjoint index ranges of the same generator: `train` from 0 (the range SFT's arithmetic data also
uses), `heldout` from 10^9, which no run ever reaches from 0.
"""

from __future__ import annotations

from pathlib import Path

from stages.common import arith
from stages.common.tasks.answers import same_number
from stages.common.tasks.base import Problem, Split, Task, check_split

HELDOUT_START = 10**9
DEFAULT_COUNT = 1000


class ArithTask(Task):
    name = "arith"

    def __init__(self, max_steps: int = 3, min_steps: int = 1):
        super().__init__()
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"arith: need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        self.max_steps, self.min_steps = max_steps, min_steps

    def options(self) -> dict[str, int]:
        return {"max_steps": self.max_steps, "min_steps": self.min_steps}

    def source(self) -> str:
        return str(Path(arith.__file__).resolve())

    def problems(self, split: Split, count: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        count = DEFAULT_COUNT if count is None else count
        index = HELDOUT_START if split == "heldout" else 0
        chosen: list[Problem] = []
        while len(chosen) < count:
            made = arith.make_problem(seed, index, self.max_steps)
            if len(made.steps) >= self.min_steps:
                chosen.append(
                    Problem(
                        id=f"arith-{seed}-{index}-{self.max_steps}",
                        prompt=made.question,
                        answer=str(made.answer),
                        solution=made.solution,
                    )
                )
            index += 1
        return chosen

    def reward(self, problem: Problem, reply: str) -> float:
        return same_number(reply, problem.answer)
