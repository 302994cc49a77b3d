"""Runs the GRPO learner on a Ray Train worker group and brings the policy back.

Ray Train owns the process group (never init it here); accelerate finds it already there. The
rollout actors travel inside the job as handles; only rank 0 talks to them. Rank 0 saves the
policy and the results into the reported checkpoint, so they reach the stage through Ray Train's
storage even when the workers run on other nodes.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.lineage import Tracker
from stages.common.model import save_pretrained
from stages.rl.learner import Job, Result, train

RESULT_FILE = "result.json"
STARTUP_TRIES = 3


def _worker(config: dict[str, Any]) -> None:
    import ray.train

    job: Job = config["job"]
    tracker: Tracker | None = config["tracker"]
    model, result = train(job, tracker.log_metrics if tracker is not None else None)
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, Path(folder) / "model")
        (Path(folder) / RESULT_FILE).write_text(json.dumps(asdict(result)))
        ray.train.report(result.metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit(job: Job, tracker: Tracker | None, workers: int, cpus: float, gpus: float, storage: Path, into: Path) -> Result:
    """Train on `workers` Ray Train workers; the policy lands in `into/model`."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job, "tracker": tracker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(
            storage_path=str(storage),
            name=f"rl-{time.strftime('%Y%m%d-%H%M%S')}",
            # No checkpoints to resume from: a worker lost mid-run fails the stage (the runner may retry
            # it). A worker group that cannot start (resources held by a crashed attempt's leftovers)
            # fails after a few 60 s tries instead of Ray Train's default of retrying forever.
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=STARTUP_TRIES),
        ),
    )
    outcome = trainer.fit()
    if outcome.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint (error: {outcome.error})")
    outcome.checkpoint.to_directory(str(into))
    return Result(**json.loads((into / RESULT_FILE).read_text()))
