"""Rollouts: the current policy answers each prompt G times, a verifier scores every answer.

`Sampler` holds a copy of the policy, takes new weights (`load`), samples groups of replies with the
shared KV-cache engine (stages.common.generate) and scores them with the task's guarded reward, so
a reward that raises or hangs costs a 0 and a count, never the run. On Ray each rollout actor is a
`Sampler`; `ActorPool` splits a step's prompts across the actors and sends them the learner's weights
through the object store. `LocalPool` runs one `Sampler` in-process (tests, benchmarks).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from stages.common.generate import Sampling, generate
from stages.common.model import load_pretrained
from stages.common.tasks import GuardedReward, Problem, Task, pass_at_k
from stages.common.tokenizer import load as load_tokenizer

# Other problems each held-out reply is scored against for its unpaired control (4 x 500 more calls of
# a reward that compares numbers: milliseconds).
UNPAIRED_SHIFTS = 4


@dataclass(frozen=True)
class Item:
    """A problem with its rendered prompt ids (ending in <|assistant_start|>)."""

    problem: Problem
    prompt: list[int]


@dataclass
class Batch:
    """A step's rollouts, laid out group by group: sample i answers item i // group_size."""

    prompts: list[list[int]] = field(default_factory=list)
    responses: list[list[int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # ended with <|assistant_end|>
    texts: list[str] = field(default_factory=list)
    version: int = -1  # the weights version that generated it
    seconds: float = 0.0  # slowest actor's generation + scoring time
    reward_counts: Counter = field(default_factory=Counter)

    @property
    def tokens(self) -> int:
        return sum(map(len, self.responses))

    def extend(self, other: Batch) -> None:
        for name in ("prompts", "responses", "rewards", "finished", "texts"):
            getattr(self, name).extend(getattr(other, name))
        self.version = other.version if self.version in (-1, other.version) else -2  # -2: mixed versions
        self.seconds = max(self.seconds, other.seconds)
        self.reward_counts.update(other.reward_counts)


@dataclass
class Scores:
    """Held-out results per problem: greedy correctness and correct samples out of `k`."""

    greedy: list[float] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    k: int = 0
    tokens: int = 0
    seconds: float = 0.0
    replies: list[str] = field(default_factory=list)  # greedy replies, for samples in stats
    # Each greedy reply's mean reward against other problems of its share: what answering without
    # reading the problem (a constant, the commonest answer) earns. Empty where a share had one problem.
    unpaired: list[float] = field(default_factory=list)

    def extend(self, other: Scores) -> None:
        self.greedy += other.greedy
        self.correct += other.correct
        self.replies += other.replies
        self.unpaired += other.unpaired
        self.k, self.tokens, self.seconds = other.k, self.tokens + other.tokens, max(self.seconds, other.seconds)

    def summary(self) -> dict[str, float]:
        out = {"accuracy": sum(self.greedy) / max(len(self.greedy), 1)}
        if self.k:
            out[f"pass_at_{self.k}"] = sum(pass_at_k(self.k, c, self.k) for c in self.correct) / len(self.correct)
            out["pass_at_1"] = sum(pass_at_k(self.k, c, 1) for c in self.correct) / len(self.correct)
        return out


@dataclass(frozen=True)
class SamplerSpec:
    model_dir: str
    tokenizer_dir: str
    task: Task
    stop_id: int
    sampling: Sampling  # for rollouts and pass@k
    reward_timeout_s: float | None = 1.0
    batch_size: int = 256  # sequences per generation batch
    threads: int | None = None  # torch threads in this process; None: leave as is
    device: str = "auto"


class Sampler:
    def __init__(self, spec: SamplerSpec):
        if spec.threads:
            torch.set_num_threads(spec.threads)
        device = spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.spec = spec
        self.device = torch.device(device)
        self.model = load_pretrained(spec.model_dir, self.device).eval()
        self.tokenizer = load_tokenizer(spec.tokenizer_dir)
        self.reward = GuardedReward(spec.task, spec.reward_timeout_s)
        self.version = 0

    def load(self, state: dict[str, torch.Tensor], version: int) -> int:
        """New policy weights (a state dict, from the object store on Ray)."""
        self.model.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        self.version = version
        return version

    def _decode(self, reply: list[int]) -> str:
        body = reply[:-1] if reply and reply[-1] == self.spec.stop_id else reply
        return self.tokenizer.decode(body)

    def _score(self, problems: list[Problem], replies: list[list[int]]) -> tuple[list[float], list[str]]:
        texts = [self._decode(r) for r in replies]
        return [self.reward(p, t) for p, t in zip(problems, texts, strict=True)], texts

    def _unpaired(self, problems: list[Problem], texts: list[str]) -> list[float]:
        """Each reply scored against the next `UNPAIRED_SHIFTS` problems (cyclically) instead of its own."""
        shifts = range(1, min(UNPAIRED_SHIFTS, len(problems) - 1) + 1)
        if not shifts:
            return []
        n = len(problems)
        return [
            sum(self.reward(problems[(i + s) % n], text) for s in shifts) / len(shifts) for i, text in enumerate(texts)
        ]

    def rollout(self, items: list[Item], group_size: int, seed: int) -> Batch:
        started = time.perf_counter()
        before = dict(self.reward.counts)
        prompts = [item.prompt for item in items for _ in range(group_size)]
        problems = [item.problem for item in items for _ in range(group_size)]
        replies = generate(
            self.model, prompts, self.spec.sampling, self.spec.stop_id, seed=seed, batch_size=self.spec.batch_size
        )
        rewards, texts = self._score(problems, replies)
        counts = Counter({k: v - before.get(k, 0) for k, v in self.reward.counts.items()})
        return Batch(
            prompts=prompts,
            responses=replies,
            rewards=rewards,
            finished=[bool(r) and r[-1] == self.spec.stop_id for r in replies],
            texts=texts,
            version=self.version,
            seconds=time.perf_counter() - started,
            reward_counts=counts,
        )

    def evaluate(self, items: list[Item], k: int, seed: int) -> Scores:
        """Greedy correctness per problem and its unpaired control, and with k > 0 the number correct among
        k samples."""
        started = time.perf_counter()
        problems = [item.problem for item in items]
        greedy = Sampling(max_new_tokens=self.spec.sampling.max_new_tokens)
        replies = generate(
            self.model, [i.prompt for i in items], greedy, self.spec.stop_id, batch_size=self.spec.batch_size
        )
        scores, texts = self._score(problems, replies)
        tokens = sum(map(len, replies))
        correct: list[int] = []
        if k:
            batch = self.rollout(items, k, seed)
            tokens += batch.tokens
            correct = [int(sum(batch.rewards[i * k : (i + 1) * k])) for i in range(len(items))]
        unpaired = self._unpaired(problems, texts)
        return Scores(scores, correct, k, tokens, time.perf_counter() - started, texts, unpaired)

    def reward_counts(self) -> dict[str, int]:
        return dict(self.reward.counts)

    def ping(self) -> int:
        return self.version


def _shares(items: list[Any], parts: int) -> list[list[Any]]:
    """Contiguous, nearly equal shares (order kept, so groups stay together)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        out.append(items[start:end])
        start = end
    return out


class LocalPool:
    """One in-process Sampler behind the pool interface (tests, benchmarks, no Ray needed)."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.size = 1

    def sync(self, state: dict[str, torch.Tensor], version: int) -> None:
        self.sampler.load({k: v.detach().clone() for k, v in state.items()}, version)

    def rollout(self, items: list[Item], group_size: int, seed: int) -> Batch:
        return self.sampler.rollout(items, group_size, seed)

    def evaluate(self, items: list[Item], k: int, seed: int) -> Scores:
        return self.sampler.evaluate(items, k, seed)

    def reward_counts(self) -> dict[str, int]:
        return self.sampler.reward_counts()


class ActorPool:
    """Rollout actors on Ray: weights go out through the object store, prompts are split evenly."""

    def __init__(self, actors: list[Any]):
        if not actors:
            raise ValueError("need at least one rollout actor")
        self.actors = actors
        self.size = len(actors)

    def sync(self, state: dict[str, torch.Tensor], version: int) -> None:
        import ray

        ref = ray.put({k: v.detach().to("cpu", copy=True) for k, v in state.items()})
        ray.get([actor.load.remote(ref, version) for actor in self.actors])

    def _gather(self, method: str, items: list[Item], *args: Any, result: type) -> Any:
        import ray

        calls = [
            getattr(actor, method).remote(share, *args[:-1], args[-1] + index)
            for index, (actor, share) in enumerate(zip(self.actors, _shares(items, self.size), strict=True))
            if share
        ]
        merged = result()
        for part in ray.get(calls):
            merged.extend(part)
        return merged

    def rollout(self, items: list[Item], group_size: int, seed: int) -> Batch:
        return self._gather("rollout", items, group_size, seed, result=Batch)

    def evaluate(self, items: list[Item], k: int, seed: int) -> Scores:
        return self._gather("evaluate", items, k, seed, result=Scores)

    def reward_counts(self) -> dict[str, int]:
        import ray

        total: Counter = Counter()
        for counts in ray.get([actor.reward_counts.remote() for actor in self.actors]):
            total.update(counts)
        return dict(total)
