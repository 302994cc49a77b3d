"""The GRPO family's math, free of models and Ray, so every number can be checked by hand.

Advantages (GRPO): each prompt's G samples form a group; a sample's advantage is its reward minus
the group's mean, divided by the group's standard deviation (Dr.GRPO drops the division:
`normalize_std=False`). Every token of a reply gets its reply's advantage.

Policy loss (PPO's clipped surrogate, per token): with ratio r = exp(logp - old_logp),

    loss_t = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)

DAPO's clip-higher uses a larger `clip_high` than `clip_low` so unlikely tokens with positive
advantage can grow. Optional KL to a frozen reference (k3 estimator, always >= 0):
exp(ref - logp) - (ref - logp) - 1, weighted by `kl_coef`.

Aggregation: `token` (DAPO) averages over every response token of the batch, so long replies
weigh by their length; `sequence` (GRPO's original) averages within each reply, then over
replies; `constant` (Dr.GRPO) sums and divides by a fixed token budget, free of length bias.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token", "sequence", "constant"]
EPS = 1e-6


def group_view(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True, eps: float = EPS) -> torch.Tensor:
    """Group-normalised advantages for rewards laid out group by group: (groups * G,) -> (groups * G,).
    The standard deviation is the population one (over the G samples) as in GRPO implementations."""
    grouped = group_view(rewards.float(), group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        centred = centred / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred.flatten()


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dynamic sampling (DAPO): True for groups whose rewards are not all equal. A group of equal
    rewards has zero advantage everywhere and teaches nothing. (groups * G,) -> (groups,) bool."""
    grouped = group_view(rewards, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > 0


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantage: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    kl_coef: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    aggregation: Aggregation = "token",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate over response tokens.

    logp, old_logp, ref_logp, mask: (rows, tokens); advantage: (rows,) or (rows, tokens).
    `normalizer` replaces the divisor: for `token` the number of response tokens, for `sequence` the
    number of replies, for `constant` the token budget (required). Pass the whole batch's count when
    the batch is split into micro batches or across ranks, so the pieces add up to one loss.
    Returns the loss and detached sums for statistics (`*_sum` over masked tokens, `tokens`)."""
    mask = mask.to(logp.dtype)
    adv = advantage[:, None] if advantage.dim() == 1 else advantage
    live = mask > 0  # padding positions get ratio 1 and KL 0, so garbage there can never overflow
    ratio = torch.exp(torch.where(live, logp - old_logp, 0.0))
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(logp)
    if kl_coef:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        delta = torch.where(live, ref_logp - logp, 0.0)
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * kl
    if aggregation == "token":
        loss = (per_token * mask).sum() / (normalizer if normalizer is not None else mask.sum().clamp(min=1))
    elif aggregation == "sequence":
        per_reply = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        loss = per_reply.sum() / (normalizer if normalizer is not None else max(len(per_reply), 1))
    elif aggregation == "constant":
        if normalizer is None:
            raise ValueError("aggregation 'constant' needs a normalizer (the token budget)")
        loss = (per_token * mask).sum() / normalizer
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    with torch.no_grad():
        # A token is clipped when the clipped branch is the one taken and it differs: no gradient flows.
        clipped_away = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
        stats = {
            "tokens": mask.sum(),
            "clipped_sum": (clipped_away.to(mask.dtype) * mask).sum(),
            "clipped_high_sum": ((adv > 0) & (ratio > 1.0 + clip_high)).to(mask.dtype).mul(mask).sum(),
            "clipped_low_sum": ((adv < 0) & (ratio < 1.0 - clip_low)).to(mask.dtype).mul(mask).sum(),
            "ratio_sum": (ratio * mask).sum(),
            "kl_sum": (kl * mask).sum(),
        }
    return loss, stats


def _sampling_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 logits of the distribution replies were sampled from; at temperature 1 no copy of the
    whole (rows, T, vocab) tensor is made."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) per position under the sampling distribution softmax(logits / temperature):
    logits (rows, T, vocab), targets (rows, T) -> (rows, T), in fp32. Replies sampled at a temperature
    are scored at it, or the ratio and the gradient belong to a policy that did not sample them."""
    logp = _sampling_logits(logits, temperature).log_softmax(dim=-1)
    return torch.gather(logp, -1, targets.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the sampling distribution per position: (rows, T, vocab) -> (rows, T)."""
    logp = _sampling_logits(logits, temperature).log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
