"""GRPO's math against values worked out by hand: group advantages (with and without the std),
dynamic sampling, the clipped objective with separate low/high clips, the direction of its
gradients, the KL penalty, and the three ways of aggregating token losses."""

from __future__ import annotations

import math

import pytest
import torch

from stages.rl import grpo

RATIOS = torch.tensor([[1.5, 0.7, 1.1]])
MASK = torch.ones(1, 3)


def test_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = grpo.advantages(rewards, group_size=4)
    # group 1: mean 0.5, population std 0.5 -> +-1; group 2: all equal -> 0
    torch.testing.assert_close(adv, torch.tensor([1.0, -1, -1, 1, 0, 0, 0, 0]), atol=1e-5, rtol=0)
    dr = grpo.advantages(rewards, group_size=4, normalize_std=False)  # Dr.GRPO: no std division
    torch.testing.assert_close(dr, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    skewed = grpo.advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    std = math.sqrt(0.75 * 0.25)  # mean 0.25
    torch.testing.assert_close(skewed, torch.tensor([0.75, -0.25, -0.25, -0.25]) / std, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="groups of 3"):
        grpo.advantages(rewards, group_size=3)


def test_dynamic_sampling_keeps_only_groups_with_different_rewards():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.2])
    assert grpo.informative_groups(rewards, 3).tolist() == [True, False, True]


def _loss(ratios, adv, **kw):
    logp = torch.log(ratios).clone().requires_grad_(True)
    loss, stats = grpo.policy_loss(logp, torch.zeros_like(logp), torch.tensor([adv]), MASK, **kw)
    loss.backward()
    return loss, stats, logp.grad


def test_positive_advantage_clips_high_and_pushes_log_probs_up():
    loss, stats, grad = _loss(RATIOS, 1.0, clip_low=0.2, clip_high=0.28)
    # per token -min(r*A, clip(r, 0.8, 1.28)*A): -1.28 (clipped), -0.7, -1.1
    assert loss.item() == pytest.approx(-(1.28 + 0.7 + 1.1) / 3)
    # d/dlogp of -r is -r where unclipped; 0 where clipped. Negative: descent raises log-probs.
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.7 / 3, -1.1 / 3]]))
    assert stats["clipped_sum"].item() == 1 and stats["clipped_high_sum"].item() == 1
    assert stats["clipped_low_sum"].item() == 0 and stats["tokens"].item() == 3


def test_negative_advantage_clips_low_and_pushes_log_probs_down():
    loss, stats, grad = _loss(RATIOS, -1.0, clip_low=0.2, clip_high=0.28)
    # -min(-r, -clip(r)) = max(r, clip(r)): 1.5, 0.8 (clipped), 1.1
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3)
    torch.testing.assert_close(grad, torch.tensor([[1.5 / 3, 0.0, 1.1 / 3]]))
    assert stats["clipped_low_sum"].item() == 1 and stats["clipped_high_sum"].item() == 0


def test_clip_higher_lets_a_rising_token_grow_further_than_a_symmetric_clip():
    symmetric, _, grad_sym = _loss(torch.tensor([[1.25, 1.0, 1.0]]), 1.0, clip_low=0.2, clip_high=0.2)
    higher, _, grad_high = _loss(torch.tensor([[1.25, 1.0, 1.0]]), 1.0, clip_low=0.2, clip_high=0.28)
    assert symmetric.item() == pytest.approx(-(1.2 + 1 + 1) / 3)  # clipped at 1.2: no gradient
    assert higher.item() == pytest.approx(-(1.25 + 1 + 1) / 3)  # inside 1.28: still learning
    assert grad_sym[0, 0].item() == 0.0 and grad_high[0, 0].item() == pytest.approx(-1.25 / 3)


def test_kl_to_the_reference_uses_the_k3_estimator():
    logp = torch.log(RATIOS)
    ref = torch.zeros_like(logp)
    base, _ = grpo.policy_loss(logp, torch.zeros_like(logp), torch.tensor([1.0]), MASK)
    with_kl, stats = grpo.policy_loss(
        logp, torch.zeros_like(logp), torch.tensor([1.0]), MASK, kl_coef=0.1, ref_logp=ref
    )
    r = RATIOS[0]
    k3 = 1 / r + torch.log(r) - 1  # exp(ref - logp) - (ref - logp) - 1 with ref = 0
    assert (with_kl - base).item() == pytest.approx(0.1 * k3.mean().item(), rel=1e-5)
    assert stats["kl_sum"].item() == pytest.approx(k3.sum().item(), rel=1e-5)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.policy_loss(logp, logp, torch.tensor([1.0]), MASK, kl_coef=0.1)


def test_token_sequence_and_constant_aggregation():
    # two replies: 1 token with loss -2, 3 tokens with loss -1 each (ratio 1, advantages 2 and 1)
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    adv = torch.tensor([2.0, 1.0])
    token, _ = grpo.policy_loss(logp, logp, adv, mask, aggregation="token")
    sequence, _ = grpo.policy_loss(logp, logp, adv, mask, aggregation="sequence")
    constant, _ = grpo.policy_loss(logp, logp, adv, mask, aggregation="constant", normalizer=8.0)
    assert token.item() == pytest.approx(-(2 + 3) / 4)  # every token weighs the same
    assert sequence.item() == pytest.approx(-(2 + 1) / 2)  # every reply weighs the same
    assert constant.item() == pytest.approx(-(2 + 3) / 8)  # a fixed budget: no length bias
    with pytest.raises(ValueError, match="normalizer"):
        grpo.policy_loss(logp, logp, adv, mask, aggregation="constant")


def test_micro_batches_with_the_batch_normalizer_add_up_to_the_whole_batch_loss():
    torch.manual_seed(0)
    logp, old = torch.randn(6, 5) * 0.1, torch.randn(6, 5) * 0.1
    mask = (torch.rand(6, 5) > 0.3).float()
    adv = torch.randn(6)
    whole, _ = grpo.policy_loss(logp, old, adv, mask)
    parts = [
        grpo.policy_loss(logp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], normalizer=mask.sum())[0]
        for i in (0, 2, 4)
    ]
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6)


def test_padding_never_reaches_the_loss_even_with_wild_values():
    logp = torch.tensor([[-1.0, 0.0]])
    old = torch.tensor([[-1.0, -500.0]])  # the padded position would overflow exp()
    loss, stats = grpo.policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-1.0)
    assert stats["ratio_sum"].item() == pytest.approx(1.0)


def test_token_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert grpo.token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))
    assert grpo.entropy(logits).item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_log_probs_are_taken_under_the_sampling_temperature():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    # at temperature 2 the probabilities go as sqrt(p): 0.707 : 0.5 : 0.5
    tempered = torch.tensor([0.5**0.5, 0.5, 0.5]) / (0.5**0.5 + 1.0)
    assert grpo.token_logprobs(logits, torch.tensor([[1]]), 2.0).item() == pytest.approx(math.log(tempered[1]))
    assert grpo.entropy(logits, 2.0).item() == pytest.approx(float(-(tempered * tempered.log()).sum()))
    assert grpo.entropy(logits, 2.0) > grpo.entropy(logits)  # a hotter sampler spreads its choices
