"""Runs the finetuning loop on a Ray Train worker group and brings the result back.

Ray Train owns the process group (never init it here); accelerate finds it already there.
Rank 0 saves the model into the reported checkpoint, so the result reaches the stage through
Ray Train's storage even when the workers run on other nodes.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.lineage import Tracker
from stages.common.model import save_pretrained
from stages.sft.train import Job, train

METRICS_FILE = "metrics.json"
REPLIES_FILE = "replies.json"


def _worker(config: dict[str, Any]) -> None:
    import ray.train

    job: Job = config["job"]
    tracker: Tracker | None = config["tracker"]
    log = tracker.log_metrics if tracker is not None else None
    model, metrics, replies = train(job, log)
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, Path(folder) / "model")
        (Path(folder) / METRICS_FILE).write_text(json.dumps(metrics))
        (Path(folder) / REPLIES_FILE).write_text(json.dumps(replies))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit(
    job: Job, tracker: Tracker | None, workers: int, cpus: float, gpus: float, storage: Path, into: Path
) -> tuple[dict[str, float], list[list[int]]]:
    """Train on `workers` Ray Train workers; the finetuned model lands in `into`. Returns the
    metrics and rank 0's sample replies."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job, "tracker": tracker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        # A fresh name per attempt: Ray Train never mistakes an earlier crashed attempt for this one.
        run_config=RunConfig(storage_path=str(storage), name=f"sft-{time.strftime('%Y%m%d-%H%M%S')}"),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint (error: {result.error})")
    result.checkpoint.to_directory(str(into))
    metrics = json.loads((into / METRICS_FILE).read_text())
    replies = json.loads((into / REPLIES_FILE).read_text())
    return metrics, replies
