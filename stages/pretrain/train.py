"""The training loop every worker runs, the same under Ray Train, torchrun or a spawned test.

Each rank builds the mesh, its pieces of the model, the optimiser and its data-parallel slice
of the shards; resumes from the latest complete checkpoint; then steps to `max_steps`,
accumulating micro-batches to `batch_tokens`, evaluating and checkpointing on schedule.
Global rank 0 logs, shows progress and exports the final model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common.model import GPTConfig, build
from stages.common.parallel.grads import clip_grad_norm
from stages.common.parallel.mesh import Mesh, ensure_process_group, pick_device
from stages.common.shards import Split, WindowLoader
from stages.pretrain import checkpoint
from stages.pretrain.config import PretrainConfig
from stages.pretrain.engine import Engine
from stages.pretrain.measure import bits_per_byte, matmul_peak_flops, tokens_per_byte
from stages.pretrain.optim import build_optimizer, lr_at, set_lr
from stages.pretrain.parallelize import parallelize, parameters


@dataclass
class Job:
    """What a worker needs; picklable, so Ray Train can ship it."""

    cfg: PretrainConfig
    shards: Path
    checkpoints: Path
    seed: int
    export_dir: Path | None = None  # rank 0 writes model.safetensors + config.json here at the end
    tokenizer: Path | None = None  # for bits per byte; None: report val loss only
    tracker: Any = None  # pipeline.lineage.Tracker
    progress: Any = None  # pipeline.progress.Progress
    halt_after: int | None = None  # stop after this step as if interrupted (checkpoint first)


@dataclass
class Result:
    metrics: dict[str, float]
    losses: list[float] = field(default_factory=list)  # every step's global train loss
    grad_norms: list[float] = field(default_factory=list)


class Meter:
    """Training throughput over the steps since it was last read (eval and checkpoints excluded)."""

    def __init__(self) -> None:
        self.seconds, self.tokens = 0.0, 0

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds, self.tokens = self.seconds + seconds, self.tokens + tokens

    def read(self) -> float:
        rate = self.tokens / max(self.seconds, 1e-9)
        self.seconds, self.tokens = 0.0, 0
        return rate


def train(job: Job) -> Result:
    cfg = job.cfg
    if cfg.problems():
        raise ValueError("; ".join(cfg.problems()))
    device = pick_device(cfg.gpus_per_worker > 0)
    if device.type == "cpu":  # Ray Train workers start with OMP_NUM_THREADS=1
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    ensure_process_group(device)
    mesh = Mesh.build(cfg.pp, cfg.dp, cfg.tp, device)
    split = Split(job.shards, "train")
    model_cfg = cfg.model.gpt(split.vocab_size)
    parts = parallelize(build(model_cfg, job.seed), cfg, mesh)
    engine = Engine(parts, cfg, mesh, model_cfg)
    modules = [module for _, module in parts]
    params = parameters(parts)
    optimizer = build_optimizer(params, cfg)
    dp_rank = mesh.coordinate("dp")
    loader = WindowLoader(split, model_cfg.seq_len, cfg.micro_batch, seed=job.seed, rank=dp_rank, world_size=cfg.dp)
    val = Split(job.shards, "val")
    # Built now so a val split too small for the mesh fails before any training.
    val_loader = WindowLoader(val, model_cfg.seq_len, cfg.micro_batch, seed=job.seed, rank=dp_rank, world_size=cfg.dp)

    start = 0
    saved = checkpoint.complete(job.checkpoints)
    if saved:
        state = checkpoint.load(saved[-1], modules, optimizer, mesh)
        checkpoint.restore_loader(loader, state["loader"])
        start = state["step"] + 1
    log = Logger(job, mesh, model_cfg, val, start) if mesh.is_logger else None

    result = Result(metrics={})
    meter = Meter()
    for step in range(start, cfg.max_steps):
        began = time.perf_counter()
        lr = lr_at(step, cfg)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for _ in range(cfg.accumulation):
            inputs, targets = _tensors(loader.next_batch(), device)
            loss = engine.train_step(inputs, targets, scale=1.0 / cfg.accumulation)
            if loss is not None:
                total += loss
        grad_norm = clip_grad_norm(params, cfg.grad_clip, mesh)
        optimizer.step()
        # Last-stage ranks hold the loss; each dp group's TP ranks hold the same value.
        loss_value = mesh.all_sum(total / cfg.accumulation).item() / (cfg.dp * cfg.tp)
        result.losses.append(loss_value)
        result.grad_norms.append(grad_norm)
        meter.add(time.perf_counter() - began, cfg.batch_tokens)
        if log is not None:
            log.train(step, loss_value, lr, grad_norm, meter)
        last = step == cfg.max_steps - 1
        if (step + 1) % cfg.eval_every == 0 or last:
            val_loss = evaluate(engine, val_loader, cfg, mesh)
            if log is not None:
                log.val(step, val_loss)
        if (step + 1) % cfg.checkpoint_every == 0 or last or step + 1 == job.halt_after:
            extra = {"loader": checkpoint.loader_state(loader)}
            checkpoint.save(job.checkpoints, step, modules, optimizer, extra, mesh, cfg.keep_checkpoints)
        if step + 1 == job.halt_after:
            result.metrics = log.close() if log is not None else {}
            return result
    if start >= cfg.max_steps:  # a restart after the last checkpoint: nothing to train, still report
        val_loss = evaluate(engine, val_loader, cfg, mesh)
        if log is not None:
            log.val(cfg.max_steps - 1, val_loss)
    if log is not None:
        if job.export_dir is not None:
            checkpoint.export(checkpoint.complete(job.checkpoints)[-1], model_cfg, job.export_dir)
        result.metrics = log.close()
    mesh.barrier()
    return result


def _tensors(batch: tuple[np.ndarray, np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in batch)


def evaluate(engine: Engine, loader: WindowLoader, cfg: PretrainConfig, mesh: Mesh) -> float:
    """Mean loss over the same leading val batches every time."""
    loader.epoch = loader.batch = 0
    batches = min(cfg.eval_batches, loader.batches_per_epoch)
    engine.set_train(False)
    total = torch.zeros((), device=mesh.device)
    for _ in range(batches):
        loss = engine.eval_step(*_tensors(loader.next_batch(), mesh.device))
        if loss is not None:
            total += loss.float()
    engine.set_train(True)
    return mesh.all_sum(total / batches).item() / (cfg.dp * cfg.tp)


class Logger:
    """Rank 0's view: metrics to MLflow, a progress bar, and the final numbers."""

    def __init__(self, job: Job, mesh: Mesh, model_cfg: GPTConfig, val: Split, start: int):
        cfg = job.cfg
        self.job, self.cfg, self.world = job, cfg, cfg.world
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        self.peak = cfg.peak_flops or matmul_peak_flops(mesh.device, dtype)
        self.flops_per_token = model_cfg.flops_per_token()
        self.tokens_per_byte = None
        if job.tokenizer is not None:
            from stages.common.tokenizer import load

            self.tokens_per_byte = tokens_per_byte(val, load(job.tokenizer))
        self.bar = job.progress.bar(total=cfg.max_steps, desc="train", unit="step") if job.progress else None
        if self.bar is not None and start:
            self.bar.update(start)
        self.last: dict[str, float] = {
            "params": float(model_cfg.num_params()),
            "peak_flops": self.peak,
            "tokens_seen": float(start * cfg.batch_tokens),
        }
        self.rates: list[float] = []

    def train(self, step: int, loss: float, lr: float, grad_norm: float, meter: Meter) -> None:
        if self.bar is not None:
            self.bar.update(1)
        self.last |= {"train_loss": loss, "tokens_seen": float((step + 1) * self.cfg.batch_tokens)}
        if (step + 1) % self.cfg.log_every and step + 1 != self.cfg.max_steps:
            return
        rate = meter.read()
        self.rates.append(rate)
        mfu = rate * self.flops_per_token / (self.peak * self.world)
        metrics = {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm}
        self._log(metrics | {"train/tokens_per_s": rate, "train/mfu": mfu}, step)

    def val(self, step: int, loss: float) -> None:
        metrics = {"val/loss": loss}
        self.last["val_loss"] = loss
        if self.tokens_per_byte is not None:
            metrics["val/bpb"] = self.last["val_bpb"] = bits_per_byte(loss, self.tokens_per_byte)
        self._log(metrics, step)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self.job.tracker is not None:
            self.job.tracker.log_metrics(metrics, step=step + 1)

    def close(self) -> dict[str, float]:
        if self.bar is not None:
            self.bar.close()
        # The first reading includes start-up (first-step kernel selection): report the rest.
        steady = self.rates[1:] or self.rates
        if steady:
            rate = sum(steady) / len(steady)
            self.last |= {"tokens_per_s": rate, "mfu": rate * self.flops_per_token / (self.peak * self.world)}
        return {k: v for k, v in self.last.items() if math.isfinite(v)}
