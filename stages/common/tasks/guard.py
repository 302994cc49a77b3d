"""Rewards that cannot take a run down: a reward function that raises, runs too long or returns
something other than a finite number in [0, 1] scores 0, and each case is counted.

Time limits: in a process's main thread (a plain script, a Ray actor's method) the call is
interrupted by SIGALRM, so a runaway reward really stops; any previous alarm (e.g. pytest-timeout's)
is restored afterwards. Elsewhere the call runs in a daemon thread that is abandoned at the deadline.
The interrupt is a BaseException, so a reward's own `except Exception` cannot swallow it.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from stages.common.rows import Skips
from stages.common.tasks.base import Problem, Task

RewardFn = Callable[[Problem, str], float]


class RewardTimeout(BaseException):
    """Raised inside a reward function that ran past its time limit."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise RewardTimeout


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _with_alarm(fn: Callable[[], Any], timeout: float) -> Any:
    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, _alarm)
    previous_left, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_left > 0:  # give the earlier alarm back what is left of its time
            left = previous_left - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)


def _with_thread(fn: Callable[[], Any], timeout: float) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    worker = threading.Thread(target=target, name="reward", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise RewardTimeout
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_with_timeout(fn: Callable[[], Any], timeout: float | None) -> Any:
    """fn() or RewardTimeout after `timeout` seconds (None: no limit)."""
    if timeout is None:
        return fn()
    return _with_alarm(fn, timeout) if _can_use_alarm() else _with_thread(fn, timeout)


class GuardedReward:
    """Calls a reward function so that nothing it does can stop the caller.

    `counts` (calls, errors, timeouts, bad_values) and `skips` (examples per reason) say what happened."""

    def __init__(self, reward: RewardFn | Task, timeout_s: float | None = 1.0, examples_per_reason: int = 3):
        self.fn: RewardFn = reward.reward if isinstance(reward, Task) else reward
        self.timeout_s = timeout_s
        self.calls = 0
        self.skips = Skips(examples_per_reason)

    def __call__(self, problem: Problem, reply: str) -> float:
        self.calls += 1
        try:
            value = call_with_timeout(lambda: self.fn(problem, reply), self.timeout_s)
        except RewardTimeout:
            self.skips.add("reward_timeout", problem.id, f"over {self.timeout_s} s")
            return 0.0
        except Exception as exc:
            self.skips.add("reward_error", problem.id, f"{type(exc).__name__}: {exc}")
            return 0.0
        try:
            value = float(value)
        except (TypeError, ValueError):
            self.skips.add("reward_bad_value", problem.id, repr(value)[:80])
            return 0.0
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            self.skips.add("reward_bad_value", problem.id, repr(value))
            return 0.0
        return value

    @property
    def counts(self) -> dict[str, int]:
        c = self.skips.counts
        return {
            "calls": self.calls,
            "errors": c["reward_error"],
            "timeouts": c["reward_timeout"],
            "bad_values": c["reward_bad_value"],
        }
