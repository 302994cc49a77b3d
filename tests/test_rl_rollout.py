"""Rollout actors: weights sent through Ray's object store really change what an actor generates;
groups come back laid out prompt by prompt with rewards from the task's verifier."""

from __future__ import annotations

import pytest
import ray
import torch
from sft_tiny import tokenizer, write_base_model, write_tokenizer

from stages.common import tasks
from stages.common.chat import ASSISTANT_END, render_prompt
from stages.common.generate import Sampling, generate
from stages.common.model import GPTConfig, build
from stages.rl.learner import skill_metrics
from stages.rl.rollout import UNPAIRED_SHIFTS, ActorPool, Item, LocalPool, Sampler, SamplerSpec, Scores


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> SamplerSpec:
    root = tmp_path_factory.mktemp("rollout")
    write_base_model(root / "base", seq_len=128, seed=0)
    write_tokenizer(root)
    return SamplerSpec(
        model_dir=str(root / "base" / "model"),
        tokenizer_dir=str(root / "tokenizer"),
        task=tasks.get("arith", max_steps=1),
        stop_id=tokenizer().special(ASSISTANT_END),
        sampling=Sampling(max_new_tokens=12, temperature=1.0),
        threads=1,
    )


def _items(count: int) -> list[Item]:
    problems = tasks.get("arith", max_steps=1).problems("heldout", count, seed=2)
    return [Item(p, render_prompt(tokenizer(), p.messages())) for p in problems]


def _other_weights(seed: int) -> dict[str, torch.Tensor]:
    cfg = GPTConfig(vocab_size=512, seq_len=128, n_layer=2, n_head=4, d_model=64)
    return build(cfg, seed=seed).state_dict()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_weight_sync_changes_what_rollout_actors_generate(spec):
    actors = [ray.remote(Sampler).options(num_cpus=0.5).remote(spec) for _ in range(2)]
    pool = ActorPool(actors)
    items = _items(6)
    greedy = pool.evaluate(items, 0, seed=0)
    first = pool.rollout(items, 2, seed=11)
    assert first.version == 0 and len(first.responses) == 12
    assert first.prompts[0] == first.prompts[1] == items[0].prompt  # group by group, in order

    pool.sync(_other_weights(seed=5), version=1)
    changed = pool.evaluate(items, 0, seed=0)
    second = pool.rollout(items, 2, seed=11)
    assert second.version == 1
    assert changed.replies != greedy.replies and second.responses != first.responses
    # The actors now generate exactly what a local model with the new weights generates.
    local = build(GPTConfig(vocab_size=512, seq_len=128, n_layer=2, n_head=4, d_model=64), seed=5).eval()
    expected = generate(local, [i.prompt for i in items], Sampling(max_new_tokens=12), spec.stop_id)
    texts = [tokenizer().decode([t for t in r if t != spec.stop_id]) for r in expected]
    assert changed.replies == texts

    original = Sampler(spec).model.state_dict()
    pool.sync(original, version=2)
    assert pool.evaluate(items, 0, seed=0).replies == greedy.replies
    for actor in actors:
        ray.kill(actor)


def test_a_local_pool_scores_groups_and_counts_reward_failures(spec):
    pool = LocalPool(Sampler(spec))
    items = _items(3)
    batch = pool.rollout(items, 4, seed=1)
    assert len(batch.rewards) == 12 and set(batch.rewards) <= {0.0, 1.0}
    assert all(len(r) <= 12 for r in batch.responses)
    assert batch.finished == [bool(r) and r[-1] == spec.stop_id for r in batch.responses]
    # A right answer in the reply earns its reward through the same path.
    assert pool.sampler.reward(items[0].problem, items[0].problem.solution) == 1.0

    class Broken(tasks.ArithTask):
        def reward(self, problem, reply):
            raise RuntimeError("verifier crashed")

    broken = LocalPool(Sampler(SamplerSpec(**{**spec.__dict__, "task": Broken(max_steps=1)})))
    batch = broken.rollout(items, 2, seed=1)
    assert batch.rewards == [0.0] * 6 and batch.reward_counts["errors"] == 6
    assert broken.reward_counts()["errors"] == 6


def test_scores_give_greedy_accuracy_and_pass_at_k(spec):
    scores = LocalPool(Sampler(spec)).evaluate(_items(4), 3, seed=0)
    assert len(scores.greedy) == 4 and len(scores.correct) == 4 and scores.k == 3
    summary = scores.summary()
    assert set(summary) == {"accuracy", "pass_at_3", "pass_at_1"}
    assert summary["pass_at_1"] <= summary["pass_at_3"]


def test_the_unpaired_control_exposes_an_answer_prior(spec):
    """A policy that answers a constant earns its accuracy again against other problems' answers, so its
    skill is 0 whatever its accuracy; one that solves each problem keeps its accuracy as skill."""
    sampler = Sampler(spec)
    problems = [item.problem for item in _items(40)]
    answers = [p.answer for p in problems]
    common = max(set(answers), key=answers.count)
    n = len(problems)

    def scores(texts: list[str]) -> Scores:
        greedy = [sampler.reward(p, t) for p, t in zip(problems, texts, strict=True)]
        return Scores(greedy=greedy, replies=texts, unpaired=sampler._unpaired(problems, texts))

    constant = scores([f"Answer: {common}"] * n)
    assert sum(constant.greedy) == answers.count(common) > 1
    assert sum(constant.unpaired) == pytest.approx(sum(constant.greedy))  # cyclic shifts keep the count
    shifted = [
        sum(answers[(i + s) % n] == answers[i] for s in range(1, UNPAIRED_SHIFTS + 1)) / UNPAIRED_SHIFTS
        for i in range(n)
    ]
    solved = scores([p.solution for p in problems])
    assert solved.greedy == [1.0] * n and solved.unpaired == pytest.approx(shifted)

    other = next(a for a in sorted(set(answers)) if answers.count(a) < answers.count(common))
    rare = scores([f"Answer: {other}"] * n)
    prior_shift = skill_metrics(rare, constant)  # "always <rare>" -> "always <common>": accuracy up, skill not
    assert prior_shift["skill_gain"] == pytest.approx(0.0, abs=1e-12)
    assert prior_shift["unpaired_after"] > prior_shift["unpaired_before"]
    learned = skill_metrics(rare, solved)
    assert learned["skill_gain"] == pytest.approx(1 - sum(shifted) / n)
    assert skill_metrics(rare, Scores(greedy=solved.greedy)) == {}  # no control, no claim


def test_a_share_of_one_problem_has_no_control(spec):
    assert Sampler(spec)._unpaired([_items(1)[0].problem], ["Answer: 3"]) == []
