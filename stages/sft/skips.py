"""Per-reason counts of skipped rows with the first few examples: bad input is never silent."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Skips:
    def __init__(self, examples_per_reason: int = 3):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._keep = examples_per_reason

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self._keep:
            shown.append(f"{where}: {detail}"[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}
