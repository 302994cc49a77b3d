"""Strict, bounded parsing of final answers in model replies. Nothing here evaluates text as code.

A reply's final answer is its last non-empty line when that line reads `Answer: <x>` (the format
the SFT stage teaches) or `#### <x>` (GSM8K's). Anything after the answer line, or no answer line,
means no answer: a number buried mid-text never earns a reward.

Numbers: optional sign and `$`, digits with well-formed thousands commas (`1,234,567`), an optional
decimal part, then trailing text that holds no digit (`12 apples.`, `$3.50 each`). Values compare
exactly as fractions, so `2.50` equals `2.5` and `1,000` equals `1000`.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_LINE = 200  # longer answer lines are not answers (and keep every regex bounded)
ANSWER_LINE = re.compile(r"(?:Answer:|####)[ \t]*(.*)")
NUMBER = re.compile(
    r"(?P<sign>[+-]?)[ \t]*\$?[ \t]*(?P<sign2>[+-]?)"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?"
    r"(?P<rest>.*)",
    re.DOTALL,
)


def final_answer(reply: str) -> str | None:
    """The text after `Answer:` / `####` on the reply's last non-empty line, else None."""
    end = len(reply.rstrip())
    start = reply.rfind("\n", 0, end) + 1
    line = reply[start:end].strip()
    if not line or len(line) > MAX_LINE:
        return None
    match = ANSWER_LINE.fullmatch(line)
    if not match:
        return None
    text = match.group(1).strip()
    return text or None


def parse_number(text: str | None) -> Fraction | None:
    """The number a short answer states, exactly; None when it states none or more than one."""
    if text is None or len(text) > MAX_LINE:
        return None
    match = NUMBER.fullmatch(text.strip())
    if not match or (match.group("int") is None and match.group("frac") is None):
        return None
    if match.group("sign") and match.group("sign2"):
        return None
    if any(ch.isdigit() for ch in match.group("rest")):  # "12 or 13", "1,23", "6:7": not one number
        return None
    rest = match.group("rest")
    if rest and not rest[0].isspace() and rest[0] not in ".,;!%)":  # "12abc" is not "12"
        return None
    digits = (match.group("int") or "0").replace(",", "") + (match.group("frac") or "")
    value = Fraction(digits)
    return -value if "-" in (match.group("sign"), match.group("sign2")) else value


def reply_number(reply: str) -> Fraction | None:
    """The number on a reply's final answer line."""
    return parse_number(final_answer(reply))


def same_number(reply: str, answer: str) -> float:
    """1.0 when the reply's final answer equals the reference answer exactly, else 0.0."""
    expected = parse_number(answer)
    got = reply_number(reply)
    return float(expected is not None and got is not None and got == expected)
