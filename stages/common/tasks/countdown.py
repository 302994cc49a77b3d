"""Countdown: reach a target with some given numbers, `+ - * /` and parentheses, each number at most once.

The reply's final line is `Answer: <expression>` (optionally `= <target>` after it). The expression
is checked with Python's `ast` parser under a whitelist (whole-number literals, the four binary
operators, parentheses) and a size bound, and evaluated by walking the tree with exact fractions:
it is never passed to `eval`. Every literal must be one of the given numbers, used no more often
than given. Problems are generated from a seed with a known solution, so each is solvable.
"""

from __future__ import annotations

import ast
import operator
import random
from collections import Counter
from fractions import Fraction
from pathlib import Path

from stages.common.tasks.answers import final_answer, parse_number
from stages.common.tasks.base import Problem, Split, Task, check_split

MAX_EXPRESSION = 120  # characters
MAX_NODES = 40
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
HELDOUT_SALT = "heldout"
DEFAULT_COUNT = 1000


class InvalidExpression(ValueError):
    pass


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise InvalidExpression("division by zero")
        return OPERATORS[type(node.op)](left, right)
    raise InvalidExpression(f"{type(node).__name__} is not allowed")


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """The exact value of a `+ - * /` expression over whole numbers and the numbers it uses.
    Raises InvalidExpression for anything else (names, calls, powers, unary minus, floats, ...)."""
    if len(expression) > MAX_EXPRESSION:
        raise InvalidExpression(f"longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise InvalidExpression(f"does not parse: {type(exc).__name__}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise InvalidExpression(f"more than {MAX_NODES} syntax nodes")
    used: list[int] = []
    value = _evaluate(tree.body, used)
    return value, used


def check(expression: str, numbers: list[int], target: int) -> bool:
    """True when `expression` uses only the given numbers (each at most as often as given) and
    equals `target` exactly."""
    left, equals, right = expression.partition("=")
    if equals:  # "25 * 2 - 4 = 46": the stated result must be the target too
        stated = parse_number(right)
        if stated is None or stated != target:
            return False
    try:
        value, used = evaluate(left)
    except InvalidExpression:
        return False
    if Counter(used) - Counter(numbers):
        return False
    return value == target


def _make(rng: random.Random, count: int, max_number: int, max_target: int) -> tuple[list[int], int, str] | None:
    """Random numbers and a target reached by combining a random subset of them left to right."""
    numbers = [rng.randint(1, max_number) for _ in range(count)]
    chosen = rng.sample(numbers, rng.randint(2, count))
    value, text = Fraction(chosen[0]), str(chosen[0])
    for n in chosen[1:]:
        options = [ast.Add, ast.Sub, ast.Mult] + ([ast.Div] if value % n == 0 else [])
        op = rng.choice(options)
        value = OPERATORS[op](value, Fraction(n))
        low = op in (ast.Mult, ast.Div) and (" + " in text or " - " in text)
        text = f"({text}) {SYMBOLS[op]} {n}" if low else f"{text} {SYMBOLS[op]} {n}"
    if value.denominator != 1 or not 1 <= value <= max_target or value in numbers:
        return None
    return numbers, int(value), text


class CountdownTask(Task):
    name = "countdown"

    def __init__(self, numbers: int = 4, max_number: int = 25, max_target: int = 100):
        super().__init__()
        if not 2 <= numbers <= 6:
            raise ValueError(f"countdown: numbers must be 2..6, got {numbers}")
        if max_number < 1 or max_target < 1:
            raise ValueError("countdown: max_number and max_target must be >= 1")
        self.count, self.max_number, self.max_target = numbers, max_number, max_target

    def options(self) -> dict[str, int]:
        return {"numbers": self.count, "max_number": self.max_number, "max_target": self.max_target}

    def source(self) -> str:
        return str(Path(__file__).resolve())

    def problems(self, split: Split, count: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        count = DEFAULT_COUNT if count is None else count
        salt = HELDOUT_SALT if split == "heldout" else "train"
        out: list[Problem] = []
        index = 0
        while len(out) < count:
            rng = random.Random(f"countdown-{seed}-{salt}-{index}")
            made = None
            while made is None:
                made = _make(rng, self.count, self.max_number, self.max_target)
            numbers, target, solution = made
            listed = ", ".join(map(str, numbers))
            out.append(
                Problem(
                    id=f"countdown-{seed}-{salt}-{index}",
                    prompt=(
                        f"Use the numbers {listed} to make {target}. You may use + - * / and parentheses, "
                        "each number at most once. End with a line `Answer: <expression>`."
                    ),
                    answer=str(target),
                    solution=f"{solution} = {target}\nAnswer: {solution}",
                    data={"numbers": numbers, "target": target},
                )
            )
            index += 1
        return out

    def reward(self, problem: Problem, reply: str) -> float:
        expression = final_answer(reply)
        if expression is None:
            return 0.0
        return float(check(expression, list(problem.data["numbers"]), int(problem.data["target"])))
