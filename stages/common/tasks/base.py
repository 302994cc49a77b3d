"""What a task is: a source of problems, a prompt per problem and a reward a program can check.

A `Problem` carries the user's message, the reference final answer (as text) and, when the source
has one, a worked reference reply. A `Task` makes problems for a split (`train` or `heldout`, never
overlapping) and scores a reply with `reward(problem, reply) -> float` in [0, 1]. Rows a task cannot
use are counted per reason in `task.skips`, never silently dropped and never fatal.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from stages.common.rows import Skips

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")


@dataclass(frozen=True, eq=False)
class Problem:
    """One problem. `answer` is the reference final answer as text (a number, or for countdown the
    target); `data` holds whatever else the task's reward needs (countdown's numbers)."""

    id: str  # stable across runs: task, source and index or content hash
    prompt: str  # the user's message
    answer: str
    solution: str = ""  # a worked reference reply ending in the answer line; "" when the source has none
    data: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[dict[str, str]]:
        """The conversation to render with `chat.render_prompt`: one user turn."""
        return [{"role": "user", "content": self.prompt}]

    def conversation(self) -> list[dict[str, str]]:
        """The prompt and its worked reference reply (for SFT-style use); needs a `solution`."""
        if not self.solution:
            raise ValueError(f"problem {self.id} has no worked solution")
        return [*self.messages(), {"role": "assistant", "content": self.solution}]


class Task(ABC):
    """A problem source + prompt builder + reward. Constructing a task does no I/O (so a config
    can be checked up front); `problems` reads or generates the rows."""

    name: str = "task"

    def __init__(self) -> None:
        self.skips = Skips()

    @abstractmethod
    def problems(self, split: Split, count: int | None = None, seed: int = 0) -> list[Problem]:
        """Up to `count` problems of `split` (all of them for None), a pure function of the
        arguments and the source. `train` and `heldout` never share a problem."""

    @abstractmethod
    def reward(self, problem: Problem, reply: str) -> float:
        """1.0 for a verified-correct reply, 0.0 otherwise (values in between are allowed).
        Must never evaluate the reply as code."""

    def source(self) -> str:
        """Where the problems come from (a path, URI or the generator's file), for lineage."""
        return self.name

    def options(self) -> dict[str, Any]:
        """The options that shape this task's problems (recorded with the data)."""
        return {}


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def digest(problems: list[Problem]) -> str:
    """Content hash of a problem set (the digest MLflow records for it)."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.prompt, p.answer, p.data], sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def heldout_by_hash(key: str, fraction: float) -> bool:
    """A stable split of dataset rows by content: the same row lands in the same split in every run."""
    value = int.from_bytes(hashlib.sha256(("heldout:" + key).encode()).digest()[:8], "big")
    return value / 2**64 < fraction
