"""Reward answers from models are outside data too: any reply text is scored in [0, 1] by every
task's reward and parser, never raising and never evaluating it."""

from __future__ import annotations

from fractions import Fraction

from fuzz_strategies import ANY_TEXT
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.common import tasks
from stages.common.tasks.countdown import check

TAILS = st.sampled_from(["Answer: ", "#### ", "Answer: 1 + 2 * 3 = ", "\nAnswer:", "Answer: $-1,234.5", ""])
REPLIES = st.builds(
    lambda head, tail, rest: head + tail + rest, ANY_TEXT, TAILS, ANY_TEXT | st.from_regex(r"[\d+*/() ,.$-]{0,30}")
)
FUZZ = settings(max_examples=100, deadline=None)
PROBLEMS = {name: tasks.get(name).problems("heldout", 1, seed=0)[0] for name in ("arith", "countdown")}


@FUZZ
@given(REPLIES)
def test_answer_parsers_never_raise(reply):
    answer = tasks.final_answer(reply)
    assert answer is None or (isinstance(answer, str) and answer == answer.strip() and answer)
    number = tasks.parse_number(answer)
    assert number is None or isinstance(number, Fraction)
    assert tasks.reply_number(reply) == number
    assert tasks.same_number(reply, "12") in (0.0, 1.0)
    assert tasks.same_number(reply, reply) in (0.0, 1.0)  # a reference answer is outside data too


@FUZZ
@given(REPLIES, st.lists(st.integers(-5, 30), max_size=6), st.integers(-5, 200))
def test_countdown_check_never_raises(expression, numbers, target):
    assert check(expression, numbers, target) in (True, False)


@FUZZ
@given(REPLIES)
def test_every_task_reward_scores_any_reply(reply):
    for name, problem in PROBLEMS.items():
        assert tasks.get(name).reward(problem, reply) in (0.0, 1.0)
