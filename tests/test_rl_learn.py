"""A short real GRPO run in one process: on an easy task the policy's mean reward rises, and the
learner's metrics (clip fraction, KL, entropy, throughput) come out."""

from __future__ import annotations

import pytest
from sft_tiny import tokenizer, write_base_model, write_tokenizer

from stages.common import tasks
from stages.common.chat import ASSISTANT_END, render_prompt
from stages.common.generate import Sampling
from stages.rl.learner import Job, Settings, train
from stages.rl.rollout import Item, LocalPool, Sampler, SamplerSpec

VOWELS = "aeiouAEIOU"


class VowelStart(tasks.ArithTask):
    """Easy for a random model to get sometimes: reward 1 when the reply starts with a vowel."""

    def reward(self, problem, reply):
        return float(reply.lstrip()[:1] in set(VOWELS) and bool(reply.strip()))


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("learn")
    write_base_model(root / "base", seq_len=64, seed=0)
    write_tokenizer(root)
    model_dir = str(root / "base" / "model")
    task = VowelStart(max_steps=1)
    stop = tokenizer().special(ASSISTANT_END)
    spec = SamplerSpec(model_dir, str(root / "tokenizer"), task, stop, Sampling(max_new_tokens=3, temperature=1.0))
    problems = task.problems("train", 64, seed=0)
    items = [Item(p, render_prompt(tokenizer(), p.messages())[-20:]) for p in problems]
    settings = Settings(
        steps=8,
        prompts_per_step=8,
        group_size=8,
        ppo_epochs=2,
        minibatches=2,
        micro_batch=16,
        lr=1e-2,
        max_new_tokens=3,
        eval_every=4,
        pass_k=4,
        seed=0,
        threads=1,
    )
    logged = []
    job = Job(model_dir, items[:56], items[56:], items[56:], stop, settings, LocalPool(Sampler(spec)), pad_id=stop)
    _, result = train(job, lambda metrics, step: logged.append((step, metrics)))
    return result, logged


def test_grpo_raises_the_mean_reward_on_an_easy_task(ran):
    result, _ = ran
    rewards = [h["reward_mean"] for h in result.history]
    assert len(rewards) == 8
    assert rewards[0] < 0.6
    assert sum(rewards[-2:]) / 2 > rewards[0] + 0.25, rewards
    assert result.metrics["accuracy_after"] >= result.metrics["accuracy_before"]


def test_the_learner_reports_its_metrics(ran):
    result, logged = ran
    m = result.metrics
    assert m["steps"] == 8 and m["world_size"] == 1 and m["heldout_problems"] == 8
    assert m["groups_kept"] + m["groups_dropped_all_equal"] == 8 * 8
    assert m["rollout_tokens_per_s"] > 0 and m["learner_tokens_per_s"] > 0
    step = next(h for h in result.history if "clip_fraction" in h)
    for key in ("clip_fraction", "kl_ref", "entropy", "loss", "response_length", "grad_norm"):
        assert key in step
    assert 0 <= step["clip_fraction"] <= 1 and step["kl_ref"] >= 0 and step["entropy"] > 0
    steps_with_pass_at_k = [s for s, metrics in logged if "heldout_pass_at_4" in metrics]
    assert steps_with_pass_at_k == [0, 4, 8]
    assert len(result.samples) == 8 and {"before", "after", "correct_before"} <= set(result.samples[0])
