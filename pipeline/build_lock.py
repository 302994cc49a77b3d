"""The build lock: one `z2h run` at a time builds a stage fingerprint (writes or clears its staging).

An flock on a file beside the staging folders it guards, so the kernel releases it when its holder
dies (and NFSv4 carries it between nodes). The holder records who it is (its MLflow run ids) while
it builds and clears the record when it returns or raises: a record found by the next holder means
the last one died while building.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import EnvironmentProblem


@dataclass
class BuildLock:
    """A held build lock. `previous` is what the last holder recorded and did not clear: it died
    while building."""

    handle: IO[str]
    previous: str

    def record(self, text: str) -> None:
        self.handle.truncate(0)
        self.handle.write(text)
        self.handle.flush()


@contextlib.contextmanager
def build_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[BuildLock]:
    """Hold the flock on `path`; `on_wait` is called once if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(0.5)
            except OSError as exc:  # ENOLCK, EOPNOTSUPP: a filesystem without (working) flock
                raise EnvironmentProblem(
                    f"cannot lock {path} ({exc.strerror}): the store needs a filesystem with flock "
                    "(local disk, NFSv4, Lustre mounted with -o flock)"
                ) from None
        handle.seek(0)
        held = BuildLock(handle, handle.read().strip())
        try:
            yield held
        finally:
            held.record("")
            fcntl.flock(handle, fcntl.LOCK_UN)
