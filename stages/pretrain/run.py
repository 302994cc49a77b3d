"""The pretrain stage's task: start a Ray Train worker group (one worker: train right here),
collect the model it exports.

Outputs (relative to the stage folder):
  model/model.safetensors, model/config.json    load with stages.common.model.load_pretrained
  train_stats.json                              final metrics, model shape and mesh
DCP checkpoints live in the scratch folder, so a restarted group (FailureConfig) or a rerun of
the same fingerprint resumes from the last complete one.
"""

from __future__ import annotations

import json
import shutil
import time

from pipeline.stage import StageContext
from stages.common.shards import Split
from stages.pretrain.config import PretrainConfig
from stages.pretrain.measure import unigram_loss
from stages.pretrain.train import Job, train

# what `z2h run` shows first
HEADLINE = ("val_loss", "val_unigram_loss", "val_bpb", "train_loss", "tokens_per_s", "mfu")


def run(ctx: StageContext) -> dict[str, float]:
    cfg: PretrainConfig = ctx.config
    upstream = ctx.upstream["tokenizer"]
    vocab = Split(upstream / "shards", "train").vocab_size
    final = ctx.scratch_dir / "final"
    job = Job(
        cfg=cfg,
        shards=upstream / "shards",
        checkpoints=ctx.scratch_dir / "checkpoints",
        seed=ctx.seed,
        export_dir=final / "model",
        tokenizer=upstream / "tokenizer",
        tracker=ctx.tracker,
        progress=ctx.progress if cfg.progress else None,
    )
    ctx.logger.info(
        "pretrain: %.2fM params, mesh pp=%d dp=%d tp=%d, %d steps x %d tokens",
        cfg.model.gpt(vocab).num_params() / 1e6,
        cfg.pp,
        cfg.dp,
        cfg.tp,
        cfg.max_steps,
        cfg.batch_tokens,
    )
    if cfg.world == 1:  # the stage task holds the worker's CPUs/GPUs: train here, no worker group
        _write_stats(job, train(job).metrics)
        shutil.copytree(final, ctx.output_dir, dirs_exist_ok=True)
    else:
        _fit(ctx, job).checkpoint.to_directory(str(ctx.output_dir))
    stats_file = ctx.output_dir / "train_stats.json"
    stats = json.loads(stats_file.read_text())
    metrics = stats["metrics"]
    baseline = unigram_loss(Split(upstream / "shards", "train"), Split(upstream / "shards", "val"))
    metrics |= {"val_unigram_loss": baseline, "val_loss_vs_unigram": metrics["val_loss"] - baseline}
    stats_file.write_text(json.dumps(stats, indent=2) + "\n")
    model_params = {
        "model": cfg.model.model_dump(),
        "vocab_size": vocab,
        "mesh": {"pp": cfg.pp, "dp": cfg.dp, "tp": cfg.tp},
    }
    ctx.tracker.log_model(
        "base", ctx.output_dir / "model", params=model_params | {"tokens_seen": metrics["tokens_seen"]}
    )
    return {key: metrics[key] for key in HEADLINE if key in metrics} | metrics


def _fit(ctx: StageContext, job: Job):
    """The Ray Train group (the stage task itself holds no resources); restarts from the last
    checkpoint on a worker failure, up to `max_failures` times.

    PACK fills nodes one after another and Ray Train numbers ranks node by node, so with TP
    innermost a TP group lands on one node whenever each node holds whole groups (the runner
    checks the cluster can, `_placement` checks it happened); PP and DP span nodes."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = job.cfg
    per_worker = {"CPU": cfg.cpus_per_worker} | ({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})
    trainer = TorchTrainer(
        train_loop_per_worker=_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=cfg.world,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker=per_worker,
            placement_strategy="PACK",
        ),
        run_config=RunConfig(
            name=f"pretrain-{ctx.fingerprint[:12]}-{int(time.time())}",
            storage_path=str(ctx.scratch_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    return trainer.fit()


def _worker(config: dict) -> None:
    """Runs on every Ray Train worker; rank 0 hands the exported model back as a Ray checkpoint."""
    import ray.train

    job: Job = config["job"]
    placement = _placement(job.cfg.tp)
    result = train(job)
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({}, checkpoint=None)
        return
    _write_stats(job, result.metrics, placement)
    ray.train.report(result.metrics, checkpoint=ray.train.Checkpoint.from_directory(str(job.export_dir.parent)))


def _placement(tp: int) -> list[dict]:
    """Every rank's node, gathered from all ranks; a TP group split across nodes is refused (its
    per-layer collectives would cross the network)."""
    import ray
    import ray.train
    import torch.distributed as dist

    context = ray.train.get_context()
    mine = {
        "rank": context.get_world_rank(),
        "node": ray.get_runtime_context().get_node_id(),
        "node_rank": context.get_node_rank(),
        "local_rank": context.get_local_rank(),
    }
    everyone: list = [None] * context.get_world_size()
    dist.all_gather_object(everyone, mine)
    for first in range(0, len(everyone), tp):
        nodes = {p["node"] for p in everyone[first : first + tp]}
        if len(nodes) > 1:
            raise RuntimeError(
                f"tensor-parallel group of ranks {first}-{first + tp - 1} landed on {len(nodes)} nodes: "
                f"choose tp so that every node holds whole groups (tp={tp})"
            )
    return everyone


def _write_stats(job: Job, metrics: dict[str, float], placement: list[dict] | None = None) -> None:
    stats = {"metrics": metrics, "config": job.cfg.model_dump(mode="json")}
    if placement:
        stats["placement"] = placement
    (job.export_dir.parent / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
