"""The sampling engine every stage shares (SFT checks, RL rollouts, eval, chat): batched generation
with a KV cache, temperature, top-k and top-p, stopping at a stop token.

Prompts of a batch are left-padded so one forward pass per step extends every row by one token;
rows that stop leave the batch (and the cache). `use_cache=False` recomputes the whole sequence
each step instead, right-padded and without a cache: the reference the cached path must equal.
`Decoder` is the step-wise form underneath: rows join (with a prefill) and leave between steps,
which is all a server needs for continuous batching.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from stages.common.kv_cache import KVCache


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row from logits (batch, vocab)."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= sampling.top_p  # mass before it already reaches p
        drop = torch.zeros_like(outside).scatter(-1, order, outside)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _budget(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    seq_len = model.cfg.seq_len
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {index} is empty")
        if len(prompt) >= seq_len:
            raise ValueError(f"prompt {index} has {len(prompt)} tokens; the model's seq_len is {seq_len}")
    return min(max_new_tokens, seq_len - max(len(p) for p in prompts))


class Decoder:
    """Rows that decode together through one KV cache. `add` prefills new prompts (left-padded
    together) and appends them as the last rows, `step` feeds every row its newest token, `keep`
    drops the rest; each returns next-token logits (rows, vocab) for the rows it ran. The cache holds
    `capacity` slots (default: the model's context); slots that became padding in every row are
    dropped when it fills up, so rows can keep joining a batch that never empties."""

    def __init__(self, model: nn.Module, capacity: int | None = None):
        self.model = model
        self.capacity = capacity or model.cfg.seq_len
        self.device = next(model.parameters()).device
        self.cache: KVCache | None = None

    @property
    def rows(self) -> int:
        return 0 if self.cache is None else self.cache.batch

    def add(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        longest = max(len(p) for p in prompts)
        pads = torch.tensor([longest - len(p) for p in prompts], device=self.device)
        tokens = torch.zeros((len(prompts), longest), dtype=torch.long, device=self.device)  # padding: any id
        for row, prompt in enumerate(prompts):
            tokens[row, longest - len(prompt) :] = torch.tensor(prompt, device=self.device)
        cache = KVCache(self.model.cfg, pads, self.capacity)
        logits = self.model(tokens, cache)[:, -1]
        if self.rows == 0:
            self.cache = cache
        else:
            self.cache.join(cache)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache.length == self.cache.capacity:
            self.cache.compact()
        return self.model(tokens[:, None], self.cache)[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.keep(rows)


def _cached_steps(
    model: nn.Module, prompts: Sequence[Sequence[int]], sampling: Sampling, stop_id: int, generator
) -> Iterator[tuple[list[int], list[int]]]:
    budget = _budget(model, prompts, sampling.max_new_tokens)
    decoder = Decoder(model, capacity=max(len(p) for p in prompts) + budget)
    rows = torch.arange(len(prompts), device=decoder.device)
    logits = decoder.add(prompts)
    for step in range(budget):
        chosen = pick(logits, sampling, generator)
        yield rows.tolist(), chosen.tolist()
        going = chosen != stop_id
        if step == budget - 1 or not going.any():
            return
        if not going.all():
            rows, chosen = rows[going], chosen[going]
            decoder.keep(going.nonzero().squeeze(-1))
        logits = decoder.step(chosen)


def _uncached_steps(
    model: nn.Module, prompts: Sequence[Sequence[int]], sampling: Sampling, stop_id: int, generator
) -> Iterator[tuple[list[int], list[int]]]:
    device = next(model.parameters()).device
    budget = _budget(model, prompts, sampling.max_new_tokens)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    tokens = torch.zeros((len(prompts), int(lengths.max()) + budget), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, device=device)
    rows = torch.arange(len(prompts), device=device)
    for _ in range(budget):
        ends = lengths[rows]
        logits = model(tokens[rows, : int(ends.max())])  # causal: padding after a row's end is unseen
        chosen = pick(logits[torch.arange(len(rows), device=device), ends - 1], sampling, generator)
        tokens[rows, ends] = chosen
        lengths[rows] = ends + 1
        yield rows.tolist(), chosen.tolist()
        rows = rows[chosen != stop_id]
        if len(rows) == 0:
            return


def attention_kernels():
    """Every SDPA kernel but cuDNN's: it builds a plan per key length, ~3.7 ms of CPU per call on
    an H100 (measured by bench/gpu.py), and a decode step brings a new key length every time."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    stop_id: int,
    *,
    seed: int | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
) -> list[list[int]]:
    """Each prompt's continuation, up to and including `stop_id` (absent when the token budget or
    the model's context ran out first). Prompts are batched by length to keep padding small;
    sampling is reproducible for a seed on the same device and batch composition."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    steps = _cached_steps if use_cache else _uncached_steps
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[list[int]] = [[] for _ in prompts]
    with attention_kernels():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for rows, chosen in steps(model, [prompts[i] for i in chunk], sampling, stop_id, generator):
                for row, token in zip(rows, chosen, strict=True):
                    replies[chunk[row]].append(token)
    return replies


@torch.no_grad()
def stream(
    model: nn.Module, prompt: Sequence[int], sampling: Sampling, stop_id: int, seed: int | None = None
) -> Iterator[int]:
    """One prompt's continuation token by token (for chat), ending with `stop_id` if reached."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    with attention_kernels():
        for _, chosen in _cached_steps(model, [prompt], sampling, stop_id, generator):
            yield chosen[0]


def ends_turn(reply: Sequence[int], stop_id: int) -> bool:
    return bool(reply) and reply[-1] == stop_id
