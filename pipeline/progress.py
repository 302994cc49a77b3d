"""Progress bars that render on the driver's console wherever the work runs.

Inside a Ray worker, bars go through `ray.experimental.tqdm_ray`, which the driver draws;
in a plain process they are ordinary tqdm bars.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _in_ray_worker() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # ray absent or not initialised: a plain process
        return False


class Progress:
    """Factory for progress bars, prefixed with the stage name."""

    def __init__(self, prefix: str = "", enabled: bool = True):
        self.prefix = prefix
        self.enabled = enabled

    def bar(
        self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Any:
        label = f"{self.prefix}: {desc}" if self.prefix and desc else (desc or self.prefix)
        if self.enabled and _in_ray_worker():
            from ray.experimental import tqdm_ray

            return tqdm_ray.tqdm(iterable, desc=label, total=total, unit=unit)
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=label, total=total, unit=unit, disable=not self.enabled, leave=False)
