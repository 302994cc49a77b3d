"""Run one function on N local processes without Ray (tests, benchmarks): spawned, joined by a
gloo (or NCCL) group through torchrun-style environment variables."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist
import torch.multiprocessing as mp

T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, work: Callable[[], object], out: Path) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    result = work()
    if rank == 0:
        out.write_bytes(pickle.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


def run_local(work: Callable[[], T], world: int) -> T:
    """`work()` on `world` spawned processes (in this process for one); rank 0's return value.
    `work` must be picklable (a module-level function or a functools.partial of one) and must
    join the group itself (stages.common.parallel.mesh.ensure_process_group)."""
    if world == 1:
        return work()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.pickle"
        mp.start_processes(_worker, args=(world, _free_port(), work, out), nprocs=world, start_method="spawn")
        return pickle.loads(out.read_bytes())  # written just now by our own rank 0
