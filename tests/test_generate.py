"""The shared sampling engine: the KV cache changes speed, never tokens; sampling knobs do what
they say; bad prompts are refused with the reason."""

from __future__ import annotations

import pytest
import torch

from stages.common.generate import Decoder, Sampling, generate, pick, stream
from stages.common.model import GPTConfig, build

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13], [7] * 20]
STOP = 5


def _model(**overrides) -> torch.nn.Module:
    cfg = dict(vocab_size=64, seq_len=48, n_layer=2, n_head=4, d_model=32)
    return build(GPTConfig(**(cfg | overrides)), seed=3).eval()


@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 2, "mlp": "swiglu"}, {"qk_norm": False}])
def test_greedy_with_the_cache_equals_greedy_without_it(overrides):
    model = _model(**overrides)
    greedy = Sampling(max_new_tokens=24)
    cached = generate(model, PROMPTS, greedy, STOP)
    uncached = generate(model, PROMPTS, greedy, STOP, use_cache=False)
    assert cached == uncached
    assert sum(map(len, cached)) > 3 * len(PROMPTS)  # not trivially short


def test_batches_and_padding_do_not_change_replies():
    model = _model()
    greedy = Sampling(max_new_tokens=16)
    batched = generate(model, PROMPTS, greedy, STOP, batch_size=8)
    single = [generate(model, [p], greedy, STOP)[0] for p in PROMPTS]
    assert batched == single
    assert all(len(r) == 16 or r[-1] == STOP for r in batched)


def test_the_cache_keeps_logits_equal_to_a_full_forward():
    model = _model()
    tokens = torch.tensor([PROMPTS[1]])
    from stages.common.kv_cache import KVCache

    cache = KVCache(model.cfg, torch.tensor([0]), capacity=len(PROMPTS[1]))
    with torch.no_grad():
        full = model(tokens)
        prefix = model(tokens[:, :4], cache)
        rest = [model(tokens[:, i : i + 1], cache) for i in range(4, tokens.shape[1])]
    torch.testing.assert_close(torch.cat([prefix, *rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_replies_stop_at_the_budget_and_the_context():
    model = _model(seq_len=24)
    replies = generate(model, PROMPTS, Sampling(max_new_tokens=100, temperature=1.0), stop_id=-1, seed=0)
    assert [len(r) for r in replies] == [24 - 20] * len(PROMPTS)  # the longest prompt bounds the batch


def test_sampling_is_reproducible_for_a_seed_and_varies_across_seeds():
    model = _model()
    hot = Sampling(max_new_tokens=12, temperature=1.5)
    first = generate(model, PROMPTS, hot, STOP, seed=7)
    assert first == generate(model, PROMPTS, hot, STOP, seed=7)
    assert first != generate(model, PROMPTS, hot, STOP, seed=8)


def test_top_k_one_and_a_tiny_top_p_are_greedy():
    model = _model()
    greedy = generate(model, PROMPTS, Sampling(max_new_tokens=10), STOP)
    assert generate(model, PROMPTS, Sampling(max_new_tokens=10, temperature=2.0, top_k=1), STOP, seed=1) == greedy
    assert generate(model, PROMPTS, Sampling(max_new_tokens=10, temperature=2.0, top_p=1e-6), STOP, seed=1) == greedy


def test_pick_draws_only_from_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    top2 = pick(logits, Sampling(temperature=1.0, top_k=2), generator)
    assert set(top2.tolist()) == {0, 1}
    assert abs((top2 == 0).float().mean().item() - 0.5 / 0.8) < 0.03
    nucleus = pick(logits, Sampling(temperature=1.0, top_p=0.9), generator)  # 0.5 + 0.3 + 0.15 reaches 0.9
    assert set(nucleus.tolist()) == {0, 1, 2}
    assert pick(logits[:1], Sampling(), generator).item() == 0


def test_stream_yields_the_same_tokens_as_generate():
    model = _model()
    greedy = Sampling(max_new_tokens=20)
    assert list(stream(model, PROMPTS[1], greedy, STOP)) == generate(model, [PROMPTS[1]], greedy, STOP)[0]


def test_rows_that_join_a_running_batch_get_the_replies_they_would_get_alone():
    """Continuous batching: prompts longer and shorter than the running rows join between steps,
    rows leave when their budget is spent, and the batch outlives the 24-slot cache (so its
    all-padding slots must be dropped on the way); every greedy reply equals the prompt run alone."""
    model = _model(seq_len=24)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [11], [7] * 12, [9, 8]]
    arrivals = {0: [0], 2: [1], 5: [2, 4], 9: [3]}
    budgets = [24 - len(p) for p in prompts]  # each row runs to the end of the context
    decoder, active, replies = Decoder(model), [], {i: [] for i in range(len(prompts))}
    logits = torch.empty(0, model.cfg.vocab_size)
    for step in range(40):
        joining = arrivals.get(step, [])
        if joining:
            logits = torch.cat([logits, decoder.add([prompts[i] for i in joining])])
            active += joining
        if not active:
            break
        chosen = logits.argmax(dim=-1)
        for index, token in zip(active, chosen.tolist(), strict=True):
            replies[index].append(token)
        going = torch.tensor([len(replies[i]) < budgets[i] for i in active])
        active = [i for i, g in zip(active, going.tolist(), strict=True) if g]
        decoder.keep(going.nonzero().squeeze(-1))
        if active:
            logits = decoder.step(chosen[going])
    assert step > 24  # outlived the cache's capacity
    alone = [generate(model, [p], Sampling(max_new_tokens=24), stop_id=-1)[0] for p in prompts]
    assert [replies[i] for i in range(len(prompts))] == alone


def test_bad_prompts_and_settings_are_refused_with_the_reason():
    model = _model(seq_len=16)
    with pytest.raises(ValueError, match="prompt 1 has 16 tokens; the model's seq_len is 16"):
        generate(model, [[1], [2] * 16], Sampling(), STOP)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate(model, [[]], Sampling(), STOP)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)
    assert generate(model, [], Sampling(), STOP) == []
