"""The one test of usable text: lone surrogates and NUL characters are named, anywhere in a parsed
value; the tokenizer's repair drops NULs and replaces lone surrogates."""

from __future__ import annotations

from stages.common.text import INVALID_UNICODE, NUL_CHARACTER, problem, problem_in, repair


def test_problems_are_named():
    assert problem("plain ünïcode 😀") is None
    assert problem("a\x00b") == NUL_CHARACTER
    assert problem("x\ud800y") == INVALID_UNICODE
    assert problem("\ud83d\ude00") == INVALID_UNICODE  # a pair as two code points is still not text


def test_problems_are_found_anywhere_in_a_value():
    assert problem_in({"a": [1, None, {"b": ("ok", "x\ud800")}]}) == INVALID_UNICODE
    assert problem_in({"key\x00": 1}) == NUL_CHARACTER
    assert problem_in([{"role": "user", "content": "fine"}, 3.5, True]) is None
    deep: list = ["\x00"]
    for _ in range(5000):  # deeper than the interpreter's recursion limit
        deep = [deep, "fine"]
    assert problem_in(deep) == NUL_CHARACTER


def test_repair_drops_nul_and_replaces_lone_surrogates():
    assert repair("plain ünïcode 😀") == ("plain ünïcode 😀", False)
    assert repair("a\x00b") == ("ab", True)
    assert repair("x\ud800y?") == ("x\ufffdy?", True)
    assert problem(repair("\x00\udfff")[0]) is None
