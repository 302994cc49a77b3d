"""Tasks with verifiable rewards, shared by the RL stage (rollout rewards) and eval (accuracy).

    from stages.common import tasks
    task = tasks.get("arith", max_steps=2)             # or "gsm8k", "asdiv", "countdown"
    problems = task.problems("heldout", 500, seed=1337)
    prompt_ids = chat.render_prompt(tokenizer, problems[0].messages())
    score = task.reward(problems[0], reply_text)       # 1.0 / 0.0, never evals the reply
    safe = tasks.GuardedReward(task, timeout_s=1.0)    # raising / slow rewards -> 0, counted

`train` and `heldout` splits never share a problem; rows a dataset task cannot use are counted in
`task.skips`. `register(name, factory)` adds a task; options are the factory's keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from stages.common.rows import Skips, SourceError
from stages.common.tasks.answers import final_answer, parse_number, reply_number, same_number
from stages.common.tasks.arithmetic import ArithTask
from stages.common.tasks.base import SPLITS, Problem, Split, Task, digest
from stages.common.tasks.countdown import CountdownTask
from stages.common.tasks.gsm8k import ASDivTask, GSM8KTask
from stages.common.tasks.guard import GuardedReward, RewardTimeout, call_with_timeout
from stages.common.tasks.stats import mean_and_se, paired_difference, pass_at_k

__all__ = [
    "SPLITS",
    "ASDivTask",
    "ArithTask",
    "CountdownTask",
    "GSM8KTask",
    "GuardedReward",
    "Problem",
    "RewardTimeout",
    "Skips",
    "SourceError",
    "Split",
    "Task",
    "call_with_timeout",
    "digest",
    "final_answer",
    "get",
    "mean_and_se",
    "names",
    "paired_difference",
    "parse_number",
    "pass_at_k",
    "register",
    "reply_number",
    "same_number",
]

_REGISTRY: dict[str, Callable[..., Task]] = {
    "arith": ArithTask,
    "gsm8k": GSM8KTask,
    "asdiv": ASDivTask,
    "countdown": CountdownTask,
}


def register(name: str, factory: Callable[..., Task]) -> None:
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> Task:
    """A task by name, built from its options. Unknown names and options are ValueErrors that
    list what exists. `cache_dir` is passed only to tasks that take it (ASDiv's package cache)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(names())}")
    factory = _REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    if "cache_dir" in options and "cache_dir" not in accepted:
        options = {k: v for k, v in options.items() if k != "cache_dir"}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"task {name!r}: unknown option(s) {unknown}; known: {sorted(accepted)}")
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"task {name!r}: {exc}") from None
