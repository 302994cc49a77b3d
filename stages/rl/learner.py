"""The GRPO learner, run by every Ray Train worker on the mesh code pretraining uses
(stages.common.parallel: FSDP2 or DDP over dp, tensor parallelism over tp, bf16 autocast); runs the
same in one plain process.

Each step: the ranks gather the current weights whole onto rank 0, which sends them to the rollout
actors and gets back G scored replies per prompt; every rank receives the batch, computes group
advantages, drops groups whose rewards are all equal (dynamic sampling), and each dp rank takes
its share of the rest (its TP peers take the same) and runs `ppo_epochs` passes of the clipped
objective over it, `minibatches` optimizer steps per pass. Before the first step and after the
last, rank 0 has the actors answer the held-out problems greedily: the before/after accuracy.
Under TP the logits are gathered (the objective needs whole-vocabulary log-probs and entropy).
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
import torch.distributed as dist

from stages.common.model import GPT, load_pretrained
from stages.common.parallel import layout
from stages.common.parallel.checks import DataParallel, tp_problems
from stages.common.parallel.compute import compute
from stages.common.parallel.grads import clip_grad_norm
from stages.common.parallel.mesh import Mesh, ensure_process_group, pick_device
from stages.common.parallel.state import full_state, plain_copy
from stages.common.tasks import paired_difference
from stages.rl import grpo
from stages.rl.rollout import Batch, Item, Scores

Log = Callable[[dict[str, float], int], None]
SAMPLES = 8


@dataclass(frozen=True)
class Settings:
    steps: int = 20
    prompts_per_step: int = 32
    group_size: int = 8
    ppo_epochs: int = 2
    minibatches: int = 1
    micro_batch: int = 64
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    normalize_std: bool = True
    aggregation: grpo.Aggregation = "token"
    dynamic_sampling: bool = True
    kl_metric: bool = True  # KL(policy || reference) each step, for the record (one more forward)
    max_new_tokens: int = 64
    temperature: float = 1.0  # the rollouts': log-probs are taken under the distribution that sampled
    eval_every: int = 10
    pass_k: int = 8
    bf16: bool = False
    log_every: int = 1
    threads: int | None = None
    seed: int = 0
    tp: int = 1
    dp_mode: DataParallel = "ddp"


@dataclass
class Job:
    """Everything a learner needs. `pool` (rollout actors) is used by rank 0 only."""

    model_dir: str
    train: list[Item]  # cycled through, prompts_per_step at a time
    monitor: list[Item]  # held-out problems for the periodic pass@k check
    heldout: list[Item]  # held-out problems answered greedily before and after: the proof
    stop_id: int
    settings: Settings
    pool: Any = None
    pad_id: int = 0


@dataclass
class Result:
    metrics: dict[str, float]
    before: list[float] = field(default_factory=list)
    after: list[float] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


def lr_at(step: int, s: Settings) -> float:
    return s.lr * min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else s.lr


def step_items(job: Job, step: int) -> list[Item]:
    n = job.settings.prompts_per_step
    return [job.train[(step * n + i) % len(job.train)] for i in range(n)]


@dataclass
class Rows:
    """A rank's training rows: token sequences with per-token response masks and advantages."""

    seqs: list[list[int]]
    starts: list[int]  # index in seq of the first response token
    advantages: list[float]
    weights: list[float]  # 0 for padding rows that only keep the dp ranks in step

    def __len__(self) -> int:
        return len(self.seqs)


def tensors(
    rows: Rows, index: list[int], pad_id: int, device: torch.device, multiple: int = 1
) -> tuple[torch.Tensor, ...]:
    """inputs, targets, mask (1 on response targets of real rows), advantage per row. Inputs are
    padded to a `multiple` of positions (tp: sequence parallelism splits them evenly)."""
    longest = 1 + multiple * math.ceil((max(len(rows.seqs[i]) for i in index) - 1) / multiple)
    seq = torch.full((len(index), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), longest - 1))
    for r, i in enumerate(index):
        s = rows.seqs[i]
        seq[r, : len(s)] = torch.tensor(s)
        if rows.weights[i]:
            mask[r, rows.starts[i] - 1 : len(s) - 1] = 1.0
    adv = torch.tensor([rows.advantages[i] for i in index])
    return seq[:, :-1].to(device), seq[:, 1:].to(device), mask.to(device), adv.to(device)


def share_rows(batch: Batch, keep: torch.Tensor, adv: torch.Tensor, group: int, rank: int, world: int) -> Rows:
    """This rank's rows: the kept samples dealt round-robin, padded so every rank has as many."""
    kept = [i for i in range(len(batch.rewards)) if keep[i // group]]
    per_rank = max(1, math.ceil(len(kept) / world))
    mine = kept[rank::world]
    rows = Rows([], [], [], [])
    for i in mine:
        rows.seqs.append(batch.prompts[i] + batch.responses[i])
        rows.starts.append(len(batch.prompts[i]))
        rows.advantages.append(float(adv[i]))
        rows.weights.append(1.0)
    filler = batch.prompts[0] + batch.responses[0] if batch.prompts else [0, 0]
    while len(rows) < per_rank:
        rows.seqs.append(filler)
        rows.starts.append(1)
        rows.advantages.append(0.0)
        rows.weights.append(0.0)
    return rows


class Learner:
    def __init__(self, job: Job, log: Log | None = None, progress: Any = None):
        s = job.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        self.job, self.s = job, s
        device = pick_device(torch.cuda.is_available())
        ensure_process_group(device)  # Ray Train's group when there is one
        self.mesh = Mesh.data_and_tensor(s.tp, device)
        # Rows are dealt over the dp ranks; TP peers take the same rows.
        self.rank, self.world = self.mesh.coordinate("dp"), self.mesh.dp
        self.rank0 = self.mesh.is_logger
        self.say: Log = log if (log is not None and self.rank0) else (lambda metrics, step: None)
        self.progress = progress if self.rank0 else None
        torch.manual_seed(s.seed)
        model = load_pretrained(job.model_dir)
        found = tp_problems(model.cfg, s.tp, model.cfg.seq_len)
        if found:
            raise ValueError(f"rl: the model in {job.model_dir} cannot be split so: {'; '.join(found)}")
        self.layout = layout.Layout(s.dp_mode, loss_parallel=False)
        self.model = layout.parallelize(model, self.mesh, self.layout)
        self.reference = None
        if s.kl_coef > 0 or s.kl_metric:  # the frozen SFT model, laid out like the policy
            reference = load_pretrained(job.model_dir).eval().requires_grad_(False)
            self.reference = layout.parallelize(reference, self.mesh, self.layout, frozen=True)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)
        self.totals: dict[str, float] = {
            "groups_dropped": 0,
            "groups_kept": 0,
            "empty_steps": 0,
            "rollout_tokens": 0,
            "rollout_seconds": 0.0,
            "learn_seconds": 0.0,
            "sync_seconds": 0.0,
            "eval_seconds": 0.0,
        }
        self.history: list[dict[str, float]] = []
        self.synced = -1  # the weights version the rollout actors hold

    # -- pieces ------------------------------------------------------------------------
    def compute(self) -> contextlib.ExitStack:
        return compute(self.mesh.device, self.s.bf16, sharded_logits=False)

    def tensors(self, rows: Rows, index: list[int]) -> tuple[torch.Tensor, ...]:
        return tensors(rows, index, self.job.pad_id, self.mesh.device, multiple=self.mesh.tp)

    def broadcast(self, value: Any) -> Any:
        if self.mesh.device_mesh is None:
            return value
        box = [value if self.rank0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reduce(self, values: list[float]) -> list[float]:
        """Sums over the dp ranks."""
        return self.mesh.dp_sum(torch.tensor(values, dtype=torch.float64, device=self.mesh.device)).tolist()

    def sync_weights(self, version: int) -> float:
        """The policy, gathered whole onto rank 0 (every rank takes part), goes to the rollout
        actors once per version of the weights."""
        started = time.perf_counter()
        if version != self.synced:
            state = full_state(self.model, self.mesh, everywhere=False)
            if self.rank0:
                self.job.pool.sync(state, version)
            self.synced = version
        return time.perf_counter() - started

    def evaluate(self, items: list[Item], k: int, seed: int) -> Scores | None:
        """Rank 0 asks the actors (which hold the current weights) to answer; others get None."""
        if not self.rank0 or not items:
            return None
        started = time.perf_counter()
        scores = self.job.pool.evaluate(items, k, seed)
        self.totals["eval_seconds"] += time.perf_counter() - started
        return scores

    def logprobs(self, model: torch.nn.Module, rows: Rows, index: list[int]) -> tuple[torch.Tensor, ...]:
        inputs, targets, mask, _ = self.tensors(rows, index)
        with self.compute():
            logits = model(inputs)
        return grpo.token_logprobs(logits, targets, self.s.temperature), mask

    # -- one step -------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        s, job = self.s, self.job
        sync_s = self.sync_weights(step)
        rollout_started = time.perf_counter()
        batch: Batch | None = None
        if self.rank0:
            batch = job.pool.rollout(step_items(job, step), s.group_size, s.seed * 1_000_003 + step * 101)
        batch = self.broadcast(batch)
        rollout_s = time.perf_counter() - rollout_started
        rewards = torch.tensor(batch.rewards)
        adv = grpo.advantages(rewards, s.group_size, s.normalize_std)
        informative = grpo.informative_groups(rewards, s.group_size)
        keep = informative if s.dynamic_sampling else torch.ones_like(informative)
        groups = len(informative)
        metrics = {
            "reward_mean": float(rewards.mean()),
            "groups_all_equal": float(groups - int(informative.sum())),
            "groups_kept": float(int(keep.sum())),
            "response_length": float(np.mean([len(r) for r in batch.responses])),
            "finished": float(np.mean(batch.finished)),
            "rollout_tokens_per_s": batch.tokens / max(rollout_s, 1e-9),
            "rollout_seconds": rollout_s,
            "sync_seconds": sync_s,
        }
        self.totals["groups_dropped"] += groups - int(keep.sum())
        self.totals["groups_kept"] += int(keep.sum())
        self.totals["rollout_tokens"] += batch.tokens
        self.totals["rollout_seconds"] += rollout_s
        self.totals["sync_seconds"] += sync_s
        if not int(keep.sum()):
            self.totals["empty_steps"] += 1
            return metrics  # every rank sees the same batch, so every rank skips together
        learn_started = time.perf_counter()
        # Dropped groups have zero advantage: they change no policy-gradient term (only the KL
        # penalty's, when there is one), only the average's divisor.
        # Keeping them in the divisor means a step with few informative groups moves the policy
        # less, instead of taking a full-size step on a handful of groups.
        kept_rows = [i for i in range(len(batch.rewards)) if keep[i // s.group_size]]
        if s.aggregation == "token":
            share = sum(len(batch.responses[i]) for i in kept_rows) / max(batch.tokens, 1)
        else:
            share = len(kept_rows) / len(batch.rewards)
        rows = share_rows(batch, keep, adv, s.group_size, self.rank, self.world)
        metrics |= self.learn(rows, step, share)
        learn_s = time.perf_counter() - learn_started
        self.totals["learn_seconds"] += learn_s
        metrics |= {"learn_seconds": learn_s, "learner_tokens_per_s": metrics.pop("_tokens") / max(learn_s, 1e-9)}
        return metrics

    def learn(self, rows: Rows, step: int, share: float = 1.0) -> dict[str, float]:
        """`ppo_epochs` passes over this rank's rows. The log-probs of the policy that sampled
        ("old") come from the first pass itself when it is a single optimizer step (nothing has
        changed yet), else from one no-grad pass up front; the frozen reference's log-probs (for
        the KL penalty or the KL metric) are computed once per step. The rows are `share` of the
        step's batch (by tokens or replies, as the aggregation counts): the loss divides by the
        whole batch's count."""
        s = self.s
        need_ref = s.kl_coef > 0 or s.kl_metric
        fresh = s.minibatches == 1  # the first pass's single update starts from the sampling policy
        old: dict[int, torch.Tensor] = {}
        ref: dict[int, torch.Tensor] = {}
        kl = [0.0, 0.0]  # k3 sum over response tokens, tokens: KL(policy before this step || reference)

        def remember(index: list[int], logp: torch.Tensor, mask: torch.Tensor) -> None:
            ref_logp = self.logprobs(self.reference, rows, index)[0] if need_ref else None
            for r, i in enumerate(index):
                old[i] = logp[r].detach()
                if ref_logp is not None:
                    ref[i] = ref_logp[r]
            if ref_logp is not None:
                delta = torch.where(mask > 0, ref_logp - logp.detach(), 0.0)
                kl[0] += float(((delta.exp() - delta - 1) * mask).sum())
                kl[1] += float(mask.sum())

        if not fresh:
            with torch.no_grad():
                every = list(range(len(rows)))
                for start in range(0, len(rows), s.micro_batch):
                    index = every[start : start + s.micro_batch]
                    remember(index, *self.logprobs(self.model, rows, index))

        def stored(store: dict[int, torch.Tensor], index: list[int], like: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(like)
            for r, i in enumerate(index):
                width = min(len(store[i]), like.shape[1])
                out[r, :width] = store[i][:width]
            return out

        rng = np.random.default_rng([s.seed, step, self.rank])
        keys = ["tokens", "clipped_sum", "clipped_high_sum", "clipped_low_sum", "ratio_sum", "entropy_sum", "loss"]
        sums = dict.fromkeys(keys, 0.0) | {"grad_norm": 0.0, "updates": 0.0}
        processed = 0
        for epoch in range(s.ppo_epochs):
            order = rng.permutation(len(rows)).tolist()
            chunks = [order[i :: s.minibatches] for i in range(s.minibatches)]
            counts = [sum(len(rows.seqs[i]) - rows.starts[i] for i in c if rows.weights[i]) for c in chunks]
            replies = [sum(1 for i in c if rows.weights[i]) for c in chunks]
            totals = self.reduce([float(x) for x in counts + replies])
            for m, chunk in enumerate(chunks):
                if s.aggregation == "token":
                    norm = totals[m]
                elif s.aggregation == "sequence":
                    norm = totals[s.minibatches + m]
                else:
                    norm = totals[s.minibatches + m] * s.max_new_tokens
                # the whole batch's count (kept rows are `share` of it); DDP/FSDP2 average the dp ranks' gradients
                norm = max(norm, 1.0) / max(share, 1e-9) / self.world
                chunk = sorted(chunk, key=lambda i: len(rows.seqs[i]))  # similar lengths share a micro batch
                pieces = [chunk[i : i + s.micro_batch] for i in range(0, len(chunk), s.micro_batch)]
                for p, index in enumerate(pieces):
                    inputs, targets, mask, adv = self.tensors(rows, index)
                    # Every rank runs as many micro batches (rows are padded to equal shares); DDP
                    # all-reduces gradients once per optimizer step, on the last one.
                    with layout.gradient_sync(self.model, self.layout, sync=p == len(pieces) - 1):
                        with self.compute():
                            logits = self.model(inputs)
                        logp = grpo.token_logprobs(logits, targets, s.temperature)
                        if epoch == 0 and fresh:
                            with torch.no_grad():
                                remember(index, logp, mask)
                        old_logp = stored(old, index, mask)
                        ref_logp = stored(ref, index, mask) if s.kl_coef else None
                        loss, stats = grpo.policy_loss(
                            logp, old_logp, adv, mask, s.clip_low, s.clip_high, s.kl_coef, ref_logp, s.aggregation, norm
                        )
                        loss.backward()
                    processed += int(inputs.numel())
                    sums["loss"] += float(loss.detach()) * norm / max(totals[m], 1.0)  # summed over ranks below
                    for key in keys[:5]:
                        sums[key] += float(stats[key])
                    if epoch == 0:
                        with torch.no_grad():
                            sums["entropy_sum"] += float((grpo.entropy(logits.detach(), s.temperature) * mask).sum())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(step, s)
                if s.grad_clip:
                    sums["grad_norm"] += clip_grad_norm(self.params, s.grad_clip, self.mesh)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                sums["updates"] += 1
        total = dict(zip(keys, self.reduce([sums[k] for k in keys]), strict=True))
        kl_sum, kl_tokens = self.reduce(kl)
        tokens = max(total["tokens"], 1)
        out = {
            "loss": total["loss"] / (s.ppo_epochs * s.minibatches),
            "clip_fraction": total["clipped_sum"] / tokens,
            "clip_high_fraction": total["clipped_high_sum"] / tokens,
            "clip_low_fraction": total["clipped_low_sum"] / tokens,
            "ratio_mean": total["ratio_sum"] / tokens,
            "entropy": total["entropy_sum"] / max(total["tokens"] / s.ppo_epochs, 1),
            "grad_norm": sums["grad_norm"] / max(sums["updates"], 1),
            "lr": lr_at(step, s),
            "_tokens": self.reduce([float(processed)])[0],
        }
        if need_ref:
            out["kl_ref"] = kl_sum / max(kl_tokens, 1)
        return out

    # -- the run --------------------------------------------------------------------------
    def periodic_eval(self, step: int) -> None:
        scores = self.evaluate(self.job.monitor, self.s.pass_k, self.s.seed * 7919 + step)
        if scores is not None:
            self.say({f"heldout_{k}": v for k, v in scores.summary().items()}, step)

    def run(self) -> Result:
        s, job = self.s, self.job
        self.sync_weights(0)
        before = self.evaluate(job.heldout, 0, 0)
        self.periodic_eval(0)
        started = time.perf_counter()
        bar = self.progress.bar(total=s.steps, desc="train", unit="step") if self.progress else None
        for step in range(s.steps):
            metrics = self.step(step)
            if bar is not None:
                bar.update(1)
            self.history.append(metrics | {"step": float(step + 1)})
            if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
                self.say(metrics, step + 1)
            if (step + 1) % s.eval_every == 0 and step + 1 < s.steps:
                self.sync_weights(step + 1)
                self.periodic_eval(step + 1)
        train_s = time.perf_counter() - started
        if bar is not None:
            bar.close()
        self.sync_weights(s.steps)
        self.periodic_eval(s.steps)
        after = self.evaluate(job.heldout, 0, 0)
        return self.finish(before, after, train_s)

    def finish(self, before: Scores | None, after: Scores | None, train_s: float) -> Result:
        s, t = self.s, self.totals
        rewards = [h["reward_mean"] for h in self.history]
        first = rewards[: max(1, len(rewards) // 4)]
        last = rewards[-max(1, len(rewards) // 4) :]
        metrics = {
            "steps": float(s.steps),
            "world_size": float(self.mesh.size),
            "reward_first_quarter": float(np.mean(first)) if rewards else 0.0,
            "reward_last_quarter": float(np.mean(last)) if rewards else 0.0,
            "groups_kept": t["groups_kept"],
            "groups_dropped_all_equal": t["groups_dropped"],
            "empty_steps": t["empty_steps"],
            "rollout_seconds": t["rollout_seconds"],
            "learn_seconds": t["learn_seconds"],
            "sync_seconds": t["sync_seconds"],
            "eval_seconds": t["eval_seconds"],
            "train_seconds": train_s,
            "rollout_tokens_per_s": t["rollout_tokens"] / max(t["rollout_seconds"], 1e-9),
        }
        learner = [h["learner_tokens_per_s"] for h in self.history if "learner_tokens_per_s" in h]
        if learner:
            metrics["learner_tokens_per_s"] = float(np.mean(learner))
        result = Result(metrics, history=self.history)
        if self.rank0 and before is not None and after is not None:
            paired = paired_difference(before.greedy, after.greedy)
            metrics |= {
                "heldout_problems": paired["n"],
                "accuracy_before": paired["before"],
                "accuracy_after": paired["after"],
                "accuracy_gain": paired["difference"],
                "accuracy_gain_se": paired["difference_se"],
                "accuracy_gain_z": paired["z"],
            }
            metrics |= skill_metrics(before, after)
            counts = self.job.pool.reward_counts()
            metrics |= {f"reward_{k}": float(v) for k, v in counts.items()}
            result.before, result.after = before.greedy, after.greedy
            result.samples = [
                {
                    "prompt": item.problem.prompt,
                    "answer": item.problem.answer,
                    "before": b_text,
                    "after": a_text,
                    "correct_before": b,
                    "correct_after": a,
                }
                for item, b_text, a_text, b, a in zip(
                    self.job.heldout[:SAMPLES], before.replies, after.replies, before.greedy, after.greedy, strict=False
                )
            ]
        return result


def skill_metrics(before: Scores, after: Scores) -> dict[str, float]:
    """The gain that is not an answer prior. A policy can raise accuracy without reading the problem,
    by answering what is commonest (a tiny model turned "always 3" into "always 1" for +9 points);
    such replies score as well against other problems' answers (`Scores.unpaired`). Skill is each
    problem's correctness minus that control, and `skill_gain` its paired change."""
    n = len(before.greedy)
    if len(before.unpaired) != n or len(after.unpaired) != n:
        return {}
    paired = paired_difference(
        [g - u for g, u in zip(before.greedy, before.unpaired, strict=True)],
        [g - u for g, u in zip(after.greedy, after.unpaired, strict=True)],
    )
    return {
        "unpaired_before": sum(before.unpaired) / n,
        "unpaired_after": sum(after.unpaired) / n,
        "skill_gain": paired["difference"],
        "skill_gain_se": paired["difference_se"],
    }


def train(job: Job, log: Log | None = None, progress: Any = None) -> tuple[GPT | None, Result]:
    """GRPO; returns the final policy as a plain model on rank 0 (None on the others) and the result.
    `progress` (pipeline.progress.Progress) shows a bar of the steps on rank 0."""
    learner = Learner(job, log, progress)
    result = learner.run()
    return plain_copy(learner.model, learner.mesh, everywhere=False), result
