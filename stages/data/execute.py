"""Runs a phase's tasks: as Ray tasks across the cluster, or inline for a one-worker stage.

Why plain Ray tasks driving datatrove blocks rather than datatrove's RayPipelineExecutor:
the executor writes its own logs/completions under a `logging_dir` that must be shared
storage and reports stats in its own format, while this stage needs per-task tallies back
(named removal reasons, samples, language counts) and markers in the core's scratch folder.
Each task returns its tally as a small dict through the object store; bulk data moves
through the scratch folder (shared storage on a multi-node cluster), as with datatrove.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def run_tasks(
    fn: Callable[..., dict[str, Any]],
    calls: Sequence[tuple],
    *,
    workers: int,
    cpus: float,
    progress: Any,
    desc: str,
) -> list[dict[str, Any]]:
    """Results in call order. At most `workers` tasks in flight, each holding `cpus` CPUs."""
    bar = progress.bar(total=len(calls), desc=desc, unit="task")
    try:
        if workers <= 1:  # the stage task holds the CPU itself: run here (no nested task to wait on)
            results = []
            for args in calls:
                results.append(fn(*args))
                bar.update(1)
            return results
        import ray

        remote = ray.remote(num_cpus=cpus)(fn)
        refs: dict[Any, int] = {}
        results_by_index: dict[int, dict[str, Any]] = {}
        queue = list(enumerate(calls))
        while queue or refs:
            while queue and len(refs) < workers:
                index, args = queue.pop(0)
                refs[remote.remote(*args)] = index
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                results_by_index[refs.pop(ref)] = ray.get(ref)
                bar.update(1)
        return [results_by_index[i] for i in range(len(calls))]
    finally:
        bar.close()
