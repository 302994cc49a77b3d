"""Data-parallel evaluation on Ray: token-level work units, spread over a few tasks per model.

Everything a worker does is model arithmetic on token ids the stage prepared: score
continuations, sum the loss of windows, answer prompts greedily, sample completions. Text,
answers and rewards stay with the stage. Units have a fixed size and content whatever the
number of workers (each unit's batches are the same), so the results are too; sampled
completions are seeded per example. A worker that runs out of memory halves its batch size and
reruns the unit that failed (accelerate's `find_executable_batch_size`); scores of batches cut
that way can differ from the planned ones in the last bits of a float.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["choice", "score", "nats", "greedy", "sample"]
logger = logging.getLogger("z2h.eval")


@dataclass(frozen=True)
class Unit:
    """kind  items                                   result per item
    choice    (context ids, (option ids, ...))        summed log-probability of each option after the context
    score     (context ids, continuation ids)         summed log-probability of the continuation
    nats      window ids                              summed next-token loss over the window
    greedy    prompt ids                              greedy reply ids (ending with stop_id if reached)
    sample    (prompt ids, seed)                      sampled reply ids
    """

    kind: Kind
    items: tuple[Any, ...]
    max_new_tokens: int = 1
    stop_id: int = 0
    temperature: float = 0.0
    top_k: int | None = None


def units(kind: Kind, items: Sequence[Any], size: int, **settings: Any) -> list[Unit]:
    return [Unit(kind, tuple(items[i : i + size]), **settings) for i in range(0, len(items), size)]


def run_unit(model, unit: Unit, batch_size: int) -> list[Any]:
    from stages.common.generate import Sampling, generate
    from stages.eval.score import continuation_logprobs, option_logprobs, window_nats

    if unit.kind == "choice":
        return option_logprobs(model, unit.items, batch_size)
    if unit.kind == "score":
        return continuation_logprobs(model, unit.items, batch_size)
    if unit.kind == "nats":
        return window_nats(model, unit.items, batch_size)
    if unit.kind == "greedy":
        return generate(model, unit.items, Sampling(unit.max_new_tokens), unit.stop_id, batch_size=batch_size)
    sampling = Sampling(unit.max_new_tokens, unit.temperature, unit.top_k)
    return [generate(model, [prompt], sampling, unit.stop_id, seed=seed)[0] for prompt, seed in unit.items]


def run_units(model_dir: str, work: Sequence[Unit], batch_size: int) -> list[list[Any]]:
    """One worker's share: load the model once (CPU, or the GPU Ray gave it), run its units."""
    import torch

    from stages.common.model import load_pretrained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_pretrained(Path(model_dir), device=device).eval()
    return run_all(model, work, batch_size, model_dir)


def run_all(model, work: Sequence[Unit], batch_size: int, label: str = "the model") -> list[list[Any]]:
    """Every unit's result, in order. An out-of-memory error (on a GPU or from the CPU allocator, as
    accelerate recognises them) halves the batch size and reruns the unit that hit it; units already
    done stay done and the smaller size holds for the rest. Other errors propagate as they are."""
    from accelerate.utils import find_executable_batch_size

    results: list[list[Any]] = []
    size = batch_size

    def halve() -> int:
        nonlocal size
        if size == 1:
            raise MemoryError(f"eval: {label} runs out of memory at batch size 1 (unit {len(results)})")
        size //= 2
        logger.warning("eval: %s ran out of memory on unit %d; batch size now %d", label, len(results), size)
        return size

    def remaining(current: int) -> list[list[Any]]:
        for unit in work[len(results) :]:
            results.append(run_unit(model, unit, current))
        return results

    # called, not used as a decorator: in some accelerate releases that form drops reduce_batch_size_fn
    return find_executable_batch_size(remaining, starting_batch_size=batch_size, reduce_batch_size_fn=halve)()


def execute(
    jobs: Mapping[str, tuple[Path, Sequence[Unit]]],
    workers: int,
    cpus: float,
    batch_size: int,
    on_done: Callable[[str, int], None] | None = None,
    gpus: float = 0.0,
) -> dict[str, list[list[Any]]]:
    """Run every model's units; `jobs` maps a model key to (model folder, units). Returns each
    model's unit results in unit order. Under Ray, each model's units go round-robin to `workers`
    tasks of `cpus` CPUs and `gpus` GPUs; without Ray (a plain process) they run here, one after another."""
    import ray

    results: dict[str, list[list[Any]]] = {key: [[] for _ in work] for key, (_, work) in jobs.items()}
    if not ray.is_initialized():
        for key, (folder, work) in jobs.items():
            results[key] = run_units(str(folder), work, batch_size)
            if on_done:
                on_done(key, len(work))
        return results
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_units)
    pending: dict[Any, tuple[str, list[int]]] = {}
    for key, (folder, work) in jobs.items():
        for worker in range(min(workers, len(work))):
            share = list(range(worker, len(work), workers))
            ref = remote.remote(str(folder), [work[i] for i in share], batch_size)
            pending[ref] = (key, share)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        key, share = pending.pop(done[0])
        for index, value in zip(share, ray.get(done[0]), strict=True):
            results[key][index] = value
        if on_done:
            on_done(key, len(share))
    return results
