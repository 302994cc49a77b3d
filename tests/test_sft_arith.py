"""The arithmetic task family: reproducible problems, worked answers that add up, a strict parser."""

from __future__ import annotations

import pytest

from stages.common import arith


def test_problems_are_reproducible_and_varied():
    assert arith.problems(1, 50) == arith.problems(1, 50)
    assert arith.problems(1, 50) != arith.problems(2, 50)
    assert len({p.question for p in arith.problems(1, 200)}) == 200


def test_worked_steps_compute_the_answer():
    for problem in arith.problems(4, 300):
        value = None
        for step in problem.steps:
            left, result = step.split(" = ")
            assert eval(left) == int(result)  # noqa: S307 -- our own generated "a op b"
            value = int(result)
        assert value == problem.answer >= 0
        assert arith.parse_answer(problem.solution) == problem.answer
        assert arith.reward(problem, problem.solution) == 1.0


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("3 + 4 = 7\nAnswer: 7", 7),
        ("Answer: -2\n\n", -2),
        ("Answer: 7 apples", None),
        ("The answer is 7", None),
        ("Answer: 7\nthanks", None),
        ("answer: 7", None),
        ("Answer: 7.5", None),
        ("", None),
    ],
)
def test_the_parser_is_strict(reply, parsed):
    assert arith.parse_answer(reply) == parsed
