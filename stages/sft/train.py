"""The finetuning loop, run by every worker: `accelerate` does DDP, bf16 autocast and gradient
accumulation; the loss counts assistant tokens only. Runs the same in one plain process."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator

from stages.common.generate import Sampling, ends_turn, generate
from stages.common.model import GPT, cross_entropy, load_pretrained

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
    chunk, loss_mask = torch.from_numpy(ids[rows]), torch.from_numpy(mask[rows]).bool()
    targets = chunk[:, 1:].masked_fill(~loss_mask[:, 1:], IGNORE)
    return chunk[:, :-1].to(device), targets.to(device)


def row_order(n_rows: int, n_needed: int, seed: int) -> np.ndarray:
    """Row indices for the whole run: a fresh shuffle per pass, the same on every rank."""
    rng = np.random.default_rng(seed)
    passes = math.ceil(n_needed / max(n_rows, 1))
    return np.concatenate([rng.permutation(n_rows) for _ in range(passes)])[:n_needed]


def heldout_loss(model: torch.nn.Module, job: Job, accelerator: Accelerator) -> float:
    """Mean loss per held-out assistant token, summed over every rank's share of the rows."""
    model.eval()
    totals = torch.zeros(2, device=accelerator.device)
    mine = np.arange(accelerator.process_index, len(job.heldout_ids), accelerator.num_processes)
    with torch.no_grad(), accelerator.autocast():
        for start in range(0, len(mine), job.settings.batch_size):
            inputs, targets = batch(
                job.heldout_ids, job.heldout_mask, mine[start : start + job.settings.batch_size], accelerator.device
            )
            logits = model(inputs)
            count = (targets != IGNORE).sum()
            totals += torch.stack([cross_entropy(logits, targets) * count, count.float()])
    model.train()
    totals = accelerator.reduce(totals, reduction="sum")
    return float(totals[0] / totals[1])


def adherence(model: GPT, job: Job, accelerator: Accelerator) -> tuple[dict[str, float], list[list[int]]]:
    """Share of held-out prompts whose greedy reply ends with <|assistant_end|> within the budget,
    overall and per source; every rank answers its share. Returns rank 0's replies as samples."""
    tags = sorted(set(job.prompt_tags))
    mine = list(range(accelerator.process_index, len(job.prompts), accelerator.num_processes))
    model.eval()
    with accelerator.autocast():
        greedy = Sampling(max_new_tokens=job.settings.max_new_tokens)
        replies = generate(model, [job.prompts[i] for i in mine], greedy, job.stop_id)
    model.train()
    counts = torch.zeros(2 + 2 * len(tags), device=accelerator.device)
    for index, reply in zip(mine, replies, strict=True):
        ended = float(ends_turn(reply, job.stop_id))
        counts[:2] += torch.tensor([ended, 1.0])
        if job.prompt_tags:
            slot = 2 + 2 * tags.index(job.prompt_tags[index])
            counts[slot : slot + 2] += torch.tensor([ended, 1.0])
    counts = accelerator.reduce(counts, reduction="sum")
    shares = {"adherence": float(counts[0] / counts[1]) if counts[1] else 0.0}
    for i, tag in enumerate(tags):
        ended, total = counts[2 + 2 * i], counts[3 + 2 * i]
        shares[f"adherence_{tag}"] = float(ended / total) if total else 0.0
    return shares, replies


def train(job: Job, log: Log | None = None) -> tuple[GPT, dict[str, float], list[list[int]]]:
    """Finetune; returns the unwrapped model, final metrics (the same on every rank) and rank 0's
    sample replies. `log(metrics, step)` is called on rank 0 only."""
    s = job.settings
    # accelerate treats a process group as multi-CPU DDP only when told `cpu=True`; without it a
    # CPU worker would silently train alone.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if s.bf16 else "no",
        gradient_accumulation_steps=s.grad_accum,
    )
    rank0 = accelerator.is_main_process
    say: Log = log if (log is not None and rank0) else (lambda metrics, step: None)
    torch.manual_seed(s.seed)
    model = load_pretrained(job.model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = s.batch_size * s.grad_accum * world
    steps = s.steps or max(1, len(job.train_ids) // per_step)
    order = row_order(len(job.train_ids), steps * per_step, s.seed)

    before = heldout_loss(model, job, accelerator)
    say({"heldout_loss": before}, 0)
    trained_tokens, train_seconds, losses = 0, 0.0, []
    for step in range(steps):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        step_rows = order[step * per_step : (step + 1) * per_step]
        for micro in range(s.grad_accum):
            at = (micro * world + rank) * s.batch_size
            inputs, targets = batch(
                job.train_ids, job.train_mask, step_rows[at : at + s.batch_size], accelerator.device
            )
            with accelerator.accumulate(model), accelerator.autocast():
                loss = cross_entropy(model(inputs), targets)
                accelerator.backward(loss)
                if s.grad_clip and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), s.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            trained_tokens += int((targets != IGNORE).sum())
            losses.append(float(loss.detach()))
        train_seconds += time.perf_counter() - started
        if (step + 1) % s.log_every == 0:
            say({"train_loss": float(np.mean(losses[-s.grad_accum * s.log_every :])), "lr": lr_at(step, s)}, step + 1)
        if (step + 1) % s.eval_every == 0 and step + 1 < steps:
            say({"heldout_loss": heldout_loss(model, job, accelerator)}, step + 1)
    after = heldout_loss(model, job, accelerator)
    say({"heldout_loss": after}, steps)

    tokens = accelerator.reduce(torch.tensor([float(trained_tokens)], device=accelerator.device), reduction="sum")
    # Every rank trains at once, so the slowest rank's clock is the run's clock.
    seconds = float(accelerator.gather(torch.tensor([train_seconds], device=accelerator.device)).max())
    unwrapped: GPT = accelerator.unwrap_model(model)
    shares, replies = adherence(unwrapped, job, accelerator)
    metrics = {
        "heldout_loss_before": before,
        "heldout_loss_after": after,
        "train_loss_last": float(np.mean(losses[-s.grad_accum * min(steps, 10) :])),
        "steps": float(steps),
        "assistant_tokens_trained": float(tokens[0]),
        "assistant_tokens_per_s": float(tokens[0]) / max(seconds, 1e-9),
        "train_seconds": seconds,
        "world_size": float(world),
        **shares,
    }
    say(shares, steps)
    return unwrapped, metrics, replies
