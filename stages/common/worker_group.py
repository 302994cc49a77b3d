"""Launches a stage's work on a Ray Train worker group and brings rank 0's folder back.

One launcher for pretrain, SFT and RL: the group's size and resources, its failure policy, where
Ray Train keeps its run, and the hand-back of results. A stage supplies only the `Work` that runs
on every worker. Ray Train owns the process group (the work never inits one). Rank 0 writes its
results (model, metrics files) into a folder that travels as a Ray Train checkpoint, so the files
reach the stage through the run's storage even when the workers run on other nodes.

A group of one worker whose resources the calling Ray task already holds (the runner gives a stage
task its worker's CPUs/GPUs when the stage has one worker) runs in that task: no Ray Train start-up,
no second process competing for the same cores (the tiny pretraining: 7.6k tokens/s in one 2-thread
process against 3.3k on two 1-thread Ray Train workers, on 2 cores).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.train import RunConfig, ScalingConfig

# A group that cannot start (its resources held, e.g. by a crashed attempt's leftovers) fails after
# this many tries of 60 s instead of Ray Train's default of retrying forever.
STARTUP_TRIES = 3

Work = Callable[[Path | None], dict[str, float]]
"""Runs on every worker: gets the folder to hand back on rank 0 (None on the others), returns metrics.
Must be picklable (a module-level function, or a functools.partial of one)."""


@dataclass(frozen=True)
class WorkerGroup:
    name: str  # the Ray Train run's name starts with it, e.g. the stage's name
    workers: int
    cpus: float  # per worker
    gpus: float = 0.0  # per worker
    # Restarts after a lost worker: worth it only for work that resumes from its own checkpoints;
    # otherwise a lost worker fails the stage (the runner may retry it).
    max_failures: int = 0

    def scaling(self) -> ScalingConfig:
        """PACK fills nodes one after another and Ray Train numbers ranks node by node, so ranks
        next to each other (a tensor-parallel group) share a node whenever nodes hold whole groups."""
        from ray.train import ScalingConfig

        resources = {"CPU": self.cpus} | ({"GPU": self.gpus} if self.gpus else {})
        return ScalingConfig(
            num_workers=self.workers,
            use_gpu=self.gpus > 0,
            resources_per_worker=resources,
            placement_strategy="PACK",
        )

    def run_config(self, storage: Path) -> RunConfig:
        from ray.train import FailureConfig, RunConfig

        return RunConfig(
            storage_path=str(storage),
            # A fresh name per launch: Ray Train never mistakes an earlier crashed attempt for this one.
            name=f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            failure_config=FailureConfig(max_failures=self.max_failures, controller_failure_limit=STARTUP_TRIES),
        )


def launch(work: Work, group: WorkerGroup, storage: Path, into: Path) -> dict[str, float]:
    """Run `work` on `group`, Ray Train's run kept under `storage`. Rank 0's folder replaces `into`;
    returns rank 0's metrics."""
    if group.workers == 1 and _held_here(group):
        return _in_process(work, group, into)
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _on_worker,
        train_loop_config={"work": work},
        scaling_config=group.scaling(),
        run_config=group.run_config(storage),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{group.name}: Ray Train finished without rank 0's folder (error: {result.error})")
    shutil.rmtree(into, ignore_errors=True)
    result.checkpoint.to_directory(str(into))
    return dict(result.metrics)


def _held_here(group: WorkerGroup) -> bool:
    """Whether this process is a Ray task holding at least one worker's CPUs and GPUs."""
    import ray

    if not ray.is_initialized():
        return False
    context = ray.get_runtime_context()
    if context.get_task_id() is None:  # the driver: it holds nothing
        return False
    held = context.get_assigned_resources()
    return held.get("CPU", 0.0) >= group.cpus and held.get("GPU", 0.0) >= group.gpus


def _in_process(work: Work, group: WorkerGroup, into: Path) -> dict[str, float]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(group.cpus)))
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    try:
        return work(into)
    finally:
        torch.set_num_threads(threads)


def _on_worker(config: dict[str, Any]) -> None:
    import ray.train

    work: Work = config["work"]
    if ray.train.get_context().get_world_rank() != 0:
        work(None)
        ray.train.report({}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        metrics = work(Path(folder))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
