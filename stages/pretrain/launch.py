"""Run `train` on N local processes without Ray (tests, benchmarks): spawn, gloo/NCCL via env."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from stages.pretrain.train import Job, Result, train


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, job: Job, out: Path) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    result = train(job)
    if rank == 0:
        out.write_text(json.dumps(vars(result)))
    dist.destroy_process_group()


def run_local(job: Job) -> Result:
    """`train(job)` on `job.cfg.world` spawned processes (in this process for one); rank 0's result.
    Trackers and progress bars stay behind: they belong to a pipeline run."""
    job = replace(job, tracker=None, progress=None)
    if job.cfg.world == 1:
        return train(job)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        args = (job.cfg.world, _free_port(), job, out)
        mp.start_processes(_worker, args=args, nprocs=job.cfg.world, start_method="spawn")
        return Result(**json.loads(out.read_text()))
