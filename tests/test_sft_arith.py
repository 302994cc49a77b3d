"""The arithmetic task family: reproducible problems, worked answers that add up, and one problem
type and one answer parser for SFT's data and RL/eval's reward."""

from __future__ import annotations

import re

from stages.common import tasks
from stages.common.tasks.arithmetic import make_problem
from stages.sft.config import SourceConfig
from stages.sft.conversations import _arith_rows


def _prompts(seed: int, count: int) -> list[str]:
    return [p.prompt for p in tasks.get("arith").problems("train", count, seed)]


def test_problems_are_reproducible_and_varied():
    assert _prompts(1, 50) == _prompts(1, 50)
    assert _prompts(1, 50) != _prompts(2, 50)
    assert len(set(_prompts(1, 200))) == 200


def test_worked_steps_compute_the_answer():
    task = tasks.get("arith")
    for problem in task.problems("train", 300, seed=4):
        *steps, last = problem.solution.split("\n")
        value = None
        for step in steps:
            left, result = step.split(" = ")
            assert eval(left) == int(result)  # noqa: S307 -- our own generated "a op b"
            value = int(result)
        assert str(value) == problem.answer and last == f"Answer: {value}" and value >= 0
        assert tasks.reply_number(problem.solution) == value
        assert task.reward(problem, problem.solution) == 1.0


def test_sft_teaches_the_problems_rl_rewards():
    source = SourceConfig(name="arith", kind="arith", count=20, max_steps=2)
    taught = [row["messages"] for _, row in _arith_rows(source, seed=3)]
    rewarded = tasks.get("arith", max_steps=2).problems("train", 20, seed=3)
    assert taught == [p.conversation() for p in rewarded]
    assert rewarded[5].id == make_problem(3, 5, max_steps=2).id


def test_sft_can_teach_only_the_small_numbers_rl_trains_on():
    source = SourceConfig(name="arith", kind="arith", count=30, max_steps=2, max_number=10)
    taught = [row["messages"] for _, row in _arith_rows(source, seed=3)]
    rewarded = tasks.get("arith", max_steps=2, max_number=10).problems("train", 30, seed=3)
    assert taught == [p.conversation() for p in rewarded]
    assert all(int(n) <= 10 for p in rewarded for n in re.findall(r"\d+", p.solution))
