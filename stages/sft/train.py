"""The finetuning loop, run by every worker on the mesh code pretraining uses
(stages.common.parallel): FSDP2 or DDP over the dp ranks, tensor parallelism over tp, bf16
autocast, gradient accumulation. Runs the same in one plain process.

The loss counts assistant tokens only and averages over all of an optimizer step's assistant
tokens, on every rank together, so any mesh takes the step one process would take.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.common.generate import Sampling, ends_turn, generate
from stages.common.model import GPT, load_pretrained
from stages.common.parallel import layout
from stages.common.parallel.checks import DataParallel, tp_problems
from stages.common.parallel.compute import compute, plain
from stages.common.parallel.grads import clip_grad_norm
from stages.common.parallel.mesh import Mesh, ensure_process_group, pick_device
from stages.common.parallel.state import plain_copy

IGNORE = -100
Log = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class Settings:
    batch_size: int
    grad_accum: int
    steps: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    bf16: bool
    eval_every: int
    log_every: int
    max_new_tokens: int
    seed: int
    tp: int = 1
    dp_mode: DataParallel = "ddp"


@dataclass
class Job:
    """Everything a worker needs; numpy arrays travel with it through Ray's object store."""

    model_dir: str
    train_ids: np.ndarray  # (rows, seq_len + 1), see stages.sft.packing
    train_mask: np.ndarray
    heldout_ids: np.ndarray
    heldout_mask: np.ndarray
    prompts: list[list[int]]  # held-out prompts ending in <|assistant_start|>
    stop_id: int  # <|assistant_end|>
    settings: Settings
    prompt_tags: list[str] = field(default_factory=list)  # source of each prompt, for per-source adherence


def lr_at(step: int, s: Settings) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def batch(ids: np.ndarray, mask: np.ndarray, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """inputs and targets (IGNORE off assistant tokens); row -1 is padding that carries no loss."""
    chunk = torch.from_numpy(ids[np.maximum(rows, 0)])
    loss_mask = torch.from_numpy(mask[np.maximum(rows, 0)]).bool() & torch.from_numpy(rows >= 0)[:, None]
    targets = chunk[:, 1:].masked_fill(~loss_mask[:, 1:], IGNORE)
    return chunk[:, :-1].to(device), targets.to(device)


def loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss over assistant targets (vocab-parallel when the logits are sharded)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def row_order(n_rows: int, n_needed: int, seed: int) -> np.ndarray:
    """Row indices for the whole run: a fresh shuffle per pass, the same on every rank."""
    rng = np.random.default_rng(seed)
    passes = math.ceil(n_needed / max(n_rows, 1))
    return np.concatenate([rng.permutation(n_rows) for _ in range(passes)])[:n_needed]


def dealt(n: int, rank: int, ranks: int) -> np.ndarray:
    """Rank `rank`'s share of n items dealt round-robin, padded with -1 to ceil(n / ranks): every
    rank runs as many forward passes (sharded models gather weights in each)."""
    mine = np.arange(rank, n, ranks)
    return np.concatenate([mine, np.full(math.ceil(n / ranks) - len(mine), -1)]).astype(np.int64)


class Finetuner:
    """One rank's model (laid out over the mesh), optimizer and the numerics around them."""

    def __init__(self, job: Job):
        s = job.settings
        self.job, self.s = job, s
        device = pick_device(torch.cuda.is_available())
        ensure_process_group(device)  # Ray Train's group when there is one
        self.mesh = Mesh.data_and_tensor(s.tp, device)
        torch.manual_seed(s.seed)
        model = load_pretrained(job.model_dir)
        found = tp_problems(model.cfg, s.tp, job.train_ids.shape[1] - 1)
        if found:
            raise ValueError(f"sft: the model in {job.model_dir} cannot be split so: {'; '.join(found)}")
        self.layout = layout.Layout(s.dp_mode)
        self.model = layout.parallelize(model, self.mesh, self.layout)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)

    def compute(self) -> contextlib.ExitStack:
        return compute(self.mesh.device, self.s.bf16, sharded_logits=self.mesh.tp > 1)

    def step(self, rows: list[np.ndarray], lr: float) -> tuple[float, float]:
        """One optimizer step over this rank's micro batches of rows; returns the step's loss per
        assistant token (all ranks) and the assistant tokens it trained on (all ranks)."""
        job, device = self.job, self.mesh.device
        micro = [batch(job.train_ids, job.train_mask, r, device) for r in rows]
        tokens = float(self.mesh.dp_sum(sum((t != IGNORE).sum() for _, t in micro).float()))
        # DDP and FSDP2 average gradients over the dp ranks: dp / tokens makes the sum a mean per token.
        scale = self.mesh.dp / max(tokens, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=device)
        for m, (inputs, targets) in enumerate(micro):
            with layout.gradient_sync(self.model, self.layout, sync=m == len(micro) - 1), self.compute():
                loss = loss_sum(self.model(inputs), targets)
                (loss * scale).backward()
            total += plain(loss.detach())
        if self.s.grad_clip:
            clip_grad_norm(self.params, self.s.grad_clip, self.mesh)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(self.mesh.dp_sum(total)) / max(tokens, 1.0), tokens

    def heldout_loss(self) -> float:
        """Mean loss per held-out assistant token over every rank's share of the rows."""
        job, mesh = self.job, self.mesh
        self.model.eval()
        totals = torch.zeros(2, device=mesh.device)
        mine = dealt(len(job.heldout_ids), mesh.coordinate("dp"), mesh.dp)
        with torch.no_grad(), self.compute():
            for start in range(0, len(mine), self.s.batch_size):
                rows = mine[start : start + self.s.batch_size]
                inputs, targets = batch(job.heldout_ids, job.heldout_mask, rows, mesh.device)
                loss = plain(loss_sum(self.model(inputs), targets))
                totals += torch.stack([loss, (targets != IGNORE).sum().float()])
        self.model.train()
        totals = mesh.dp_sum(totals)
        return float(totals[0] / totals[1])


def adherence(model: GPT, job: Job, mesh: Mesh) -> tuple[dict[str, float], list[list[int]]]:
    """Share of held-out prompts whose greedy reply ends with <|assistant_end|> within the budget,
    overall and per source. `model` is a plain copy on every rank, so every rank (TP peers too)
    answers its own share. Returns rank 0's replies (prompts 0, world, 2 * world, ...) as samples."""
    tags = sorted(set(job.prompt_tags))
    mine = list(range(mesh.rank, len(job.prompts), mesh.size))
    model.eval()
    with compute(mesh.device, job.settings.bf16, sharded_logits=False):
        greedy = Sampling(max_new_tokens=job.settings.max_new_tokens)
        replies = generate(model, [job.prompts[i] for i in mine], greedy, job.stop_id)
    model.train()
    counts = torch.zeros(2 + 2 * len(tags), device=mesh.device)
    for index, reply in zip(mine, replies, strict=True):
        ended = float(ends_turn(reply, job.stop_id))
        counts[:2] += torch.tensor([ended, 1.0])
        if job.prompt_tags:
            slot = 2 + 2 * tags.index(job.prompt_tags[index])
            counts[slot : slot + 2] += torch.tensor([ended, 1.0])
    counts = mesh.all_sum(counts)
    shares = {"adherence": float(counts[0] / counts[1]) if counts[1] else 0.0}
    for i, tag in enumerate(tags):
        ended, total = counts[2 + 2 * i], counts[3 + 2 * i]
        shares[f"adherence_{tag}"] = float(ended / total) if total else 0.0
    return shares, replies


def train(job: Job, log: Log | None = None, progress: Any = None) -> tuple[GPT, dict[str, float], list[list[int]]]:
    """Finetune; returns a plain copy of the model (the same on every rank), final metrics (the
    same on every rank) and rank 0's sample replies. `log(metrics, step)` is called and the
    `progress` bar (pipeline.progress.Progress) shown on rank 0 only."""
    s = job.settings
    tuner = Finetuner(job)
    mesh = tuner.mesh
    say: Log = log if (log is not None and mesh.is_logger) else (lambda metrics, step: None)
    per_step = s.batch_size * s.grad_accum * mesh.dp
    steps = s.steps or max(1, len(job.train_ids) // per_step)
    bar = progress.bar(total=steps, desc="train", unit="step") if progress and mesh.is_logger else None
    order = row_order(len(job.train_ids), steps * per_step, s.seed)
    dp_rank = mesh.coordinate("dp")

    before = tuner.heldout_loss()
    say({"heldout_loss": before}, 0)
    trained_tokens, train_seconds, losses = 0.0, 0.0, []
    for step in range(steps):
        started = time.perf_counter()
        step_rows = order[step * per_step : (step + 1) * per_step]
        mine = [step_rows[(m * mesh.dp + dp_rank) * s.batch_size :][: s.batch_size] for m in range(s.grad_accum)]
        loss, tokens = tuner.step(mine, lr_at(step, s))
        trained_tokens += tokens
        losses.append(loss)
        train_seconds += time.perf_counter() - started
        if bar is not None:
            bar.update(1)
        if (step + 1) % s.log_every == 0:
            say({"train_loss": float(np.mean(losses[-s.log_every :])), "lr": lr_at(step, s)}, step + 1)
        if (step + 1) % s.eval_every == 0 and step + 1 < steps:
            say({"heldout_loss": tuner.heldout_loss()}, step + 1)
    if bar is not None:
        bar.close()
    after = tuner.heldout_loss()
    say({"heldout_loss": after}, steps)

    # Every rank trains at once, so the slowest rank's clock is the run's clock.
    seconds = float(mesh.all_max(torch.tensor([train_seconds], device=mesh.device))[0])
    model = plain_copy(tuner.model, mesh, everywhere=True)
    shares, replies = adherence(model, job, mesh)
    metrics = {
        "heldout_loss_before": before,
        "heldout_loss_after": after,
        "train_loss_last": float(np.mean(losses[-min(steps, 10) :])),
        "steps": float(steps),
        "assistant_tokens_trained": trained_tokens,
        "assistant_tokens_per_s": trained_tokens / max(seconds, 1e-9),
        "train_seconds": seconds,
        "world_size": float(mesh.size),
        **shares,
    }
    say(shares, steps)
    return model, metrics, replies
