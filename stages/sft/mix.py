"""Held-out split by conversation, and the training mix by per-source weights and epochs.

`epochs` fixes how many conversations a source contributes in total (2.0: every training
conversation twice; 0.5: a random half). `weight` sets the order they arrive in: the next
conversation comes from a source with probability proportional to its weight among the sources
that still have some left, so weights shape what each stretch of training sees.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence

from stages.sft.config import SourceConfig
from stages.sft.conversations import Example


def is_heldout(key: str, seed: int, fraction: float) -> bool:
    """Stable under reordering and other sources: the same conversation always lands on the same side."""
    value = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return value / 2**64 < fraction


def split(examples: Sequence[Example], seed: int, fraction: float) -> tuple[list[Example], list[Example]]:
    train, heldout = [], []
    for example in examples:
        (heldout if is_heldout(example.key, seed, fraction) else train).append(example)
    return train, heldout


def repeat(examples: Sequence[Example], epochs: float, rng: random.Random) -> list[Example]:
    """floor(epochs) shuffled copies plus a random share for the fractional part."""
    whole, part = int(epochs), epochs - int(epochs)
    queue: list[Example] = []
    for _ in range(whole):
        queue += rng.sample(list(examples), len(examples))
    return queue + rng.sample(list(examples), round(part * len(examples)))


def mix(train: Mapping[str, Sequence[Example]], sources: Sequence[SourceConfig], seed: int) -> list[Example]:
    rng = random.Random(f"sft-mix-{seed}")
    queues = {s.name: repeat(train.get(s.name, ()), s.epochs, rng) for s in sources}
    weights = {s.name: s.weight for s in sources}
    heads = dict.fromkeys(queues, 0)
    mixed: list[Example] = []
    while True:
        open_names = [name for name, queue in queues.items() if heads[name] < len(queue)]
        if not open_names:
            return mixed
        name = rng.choices(open_names, weights=[weights[n] for n in open_names])[0]
        mixed.append(queues[name][heads[name]])
        heads[name] += 1
