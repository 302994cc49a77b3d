"""Progress bars for stage code, wherever it runs.

On a terminal they are ordinary tqdm bars. Everywhere else (a Ray worker, whose output the
driver relays line by line; a log file; a pipe) a bar is a `LineBar`: one plain line every few
seconds while it moves, the last reading when it closes, and nothing after that. Live bars
relayed from Ray workers are no use there: every refresh becomes a line, and a bar the driver
never saw close is re-drawn under every later stage's output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

LINE_INTERVAL_S = 5.0


class LineBar:
    """The tqdm calls stages make (update, close, iteration), written as one line per `interval`."""

    def __init__(self, iterable: Iterable | None, *, total: int | None, label: str, unit: str, interval: float):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.label, self.unit, self.interval = iterable, total, label, unit, interval
        self.n = 0
        self.closed = False
        self.started = self.last_line = time.monotonic()
        self.shown = 0  # n at the last line written

    def update(self, n: int = 1) -> None:
        if self.closed:
            return
        self.n += n
        if time.monotonic() - self.last_line >= self.interval:
            self._line()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self.shown:
            self._line()

    def _line(self) -> None:
        self.last_line = now = time.monotonic()
        self.shown = self.n
        meter = tqdm.format_meter(
            self.n,
            self.total,
            now - self.started,
            ncols=0,  # no bar: a log line
            prefix=self.label,
            unit=self.unit,
            unit_scale=self.unit == "B",  # bytes read best as kB/MB
        )
        # Not print(): Ray Train patches it in its workers to also log each message, so lines came twice.
        sys.stderr.write(meter + "\n")
        sys.stderr.flush()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise ValueError(f"{self.label}: this bar was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()


class Progress:
    """Factory for progress bars, prefixed with the stage name."""

    def __init__(self, prefix: str = "", enabled: bool = True, interval: float = LINE_INTERVAL_S):
        self.prefix = prefix
        self.enabled = enabled
        self.interval = interval

    def bar(
        self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Any:
        label = f"{self.prefix}: {desc}" if self.prefix and desc else (desc or self.prefix)
        if self.enabled and not sys.stderr.isatty():
            return LineBar(iterable, total=total, label=label, unit=unit, interval=self.interval)
        return tqdm(iterable, desc=label, total=total, unit=unit, disable=not self.enabled, leave=False)
