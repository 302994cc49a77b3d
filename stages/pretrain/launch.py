"""Run `train` on N local processes without Ray (tests, benchmarks): spawn, gloo/NCCL via env."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from stages.common.parallel.spawn import run_local as spawn
from stages.pretrain.train import Job, Result, train


def run_local(job: Job) -> Result:
    """`train(job)` on `job.cfg.world` spawned processes (in this process for one); rank 0's result.
    Trackers and progress bars stay behind: they belong to a pipeline run."""
    return spawn(partial(train, replace(job, tracker=None, progress=None)), job.cfg.world)
