"""Numbers that summarise rewards: pass@k (the unbiased estimator of Chen et al. 2021) and the
paired difference of two models' accuracy on the same problems with its standard error."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """Accuracy before and after on the same problems, the difference and the standard error of
    the per-problem differences (paired: problem difficulty cancels out)."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need two equally long non-empty score lists, got {len(before)} and {len(after)}")
    diff, se = mean_and_se([a - b for a, b in zip(before, after, strict=True)])
    return {
        "n": float(len(before)),
        "before": sum(before) / len(before),
        "after": sum(after) / len(after),
        "difference": -diff,
        "difference_se": se,
        "z": (-diff / se) if se > 0 else 0.0,
    }
