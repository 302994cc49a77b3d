"""The pretrain stage's task: train on a Ray Train worker group (one worker: train right here),
collect the model rank 0 exports.

Outputs (relative to the stage folder):
  model/model.safetensors, model/config.json    load with stages.common.model.load_pretrained
  train_stats.json                              final metrics, model shape and mesh
DCP checkpoints live in the scratch folder, so a restarted group (FailureConfig) or a rerun of
the same fingerprint resumes from the last complete one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

from pipeline.stage import StageContext
from stages.common.shards import Split
from stages.common.worker_group import WorkerGroup, launch
from stages.pretrain.config import PretrainConfig
from stages.pretrain.measure import unigram_loss
from stages.pretrain.train import Job, train

# what `z2h run` shows first


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
    # A lost worker restarts the group, which resumes from the last DCP checkpoint in scratch.
    group = WorkerGroup("pretrain", cfg.world, cfg.cpus_per_worker, cfg.gpus_per_worker, cfg.max_failures)
    launch(partial(_worker, job), group, ctx.scratch_dir / "ray_train", final)
    shutil.copytree(final, ctx.output_dir, dirs_exist_ok=True)
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
    return metrics


def _train(job: Job, out: Path | None, placement: list[dict] | None = None) -> dict[str, float]:
    """Train; rank 0's `out` receives the exported model and train_stats.json (None on other ranks)."""
    metrics = train(replace(job, export_dir=out / "model" if out is not None else None)).metrics
    if out is not None:
        stats = {"metrics": metrics, "config": job.cfg.model_dump(mode="json")}
        if placement:
            stats["placement"] = placement
        (out / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return metrics


def _worker(job: Job, out: Path | None) -> dict[str, float]:
    """One Ray Train worker's share. The launcher's PACK placement keeps a TP group (adjacent ranks)
    on one node whenever each node holds whole groups (the runner checks the cluster can,
    `_placement` checks it happened); PP and DP span nodes."""
    return _train(job, out, _placement(job.cfg.tp))


def _placement(tp: int) -> list[dict]:
    """Every rank's node, gathered from all ranks; a TP group split across nodes is refused (its
    per-layer collectives would cross the network)."""
    import ray
    import ray.train
    import torch.distributed as dist

    if not dist.is_initialized():  # one worker, trained in the stage task
        return []
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
