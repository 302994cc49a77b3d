from __future__ import annotations

import pytest
import torch

from stages.common.model import GPTConfig, build, cross_entropy, load_pretrained, save_pretrained

SMALL = dict(vocab_size=300, seq_len=32, n_layer=2, n_head=4, d_model=32)


@pytest.mark.parametrize("extra", [{}, {"n_kv_head": 2}, {"mlp": "relu2"}, {"qk_norm": False}])
def test_parameter_count_matches_modules(extra):
    cfg = GPTConfig(**SMALL, **extra)
    model = build(cfg, seed=0)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    assert cfg.num_params(embedding=False) == cfg.num_params() - cfg.vocab_size * cfg.d_model
    assert cfg.flops_per_token() > 6 * cfg.num_params(embedding=False)


def test_init_is_deterministic_from_the_seed():
    cfg = GPTConfig(**SMALL)
    a, b, c = build(cfg, seed=1), build(cfg, seed=1), build(cfg, seed=2)
    for (name, pa), pb, pc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if pa.dim() == 2:
            assert not torch.equal(pa, pc), name


def test_causal_future_tokens_do_not_change_the_past():
    model = build(GPTConfig(**SMALL, n_kv_head=2), seed=0)
    tokens = torch.randint(0, 300, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 300
    with torch.no_grad():
        assert torch.allclose(model(tokens)[:, :10], model(changed)[:, :10], atol=1e-6)
        assert not torch.allclose(model(tokens)[:, 10:], model(changed)[:, 10:])


def test_initial_loss_is_near_uniform_and_training_lowers_it():
    torch.manual_seed(0)
    model = build(GPTConfig(**SMALL), seed=0)
    data = torch.randint(0, 300, (4, 33))
    inputs, targets = data[:, :-1], data[:, 1:]
    first = cross_entropy(model(inputs), targets)
    assert abs(first.item() - torch.log(torch.tensor(300.0)).item()) < 0.3
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = cross_entropy(model(inputs), targets)
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert loss.item() < first.item() - 1.0


def test_save_and_load_round_trip(tmp_path):
    model = build(GPTConfig(**SMALL, mlp="swiglu"), seed=3)
    save_pretrained(model, tmp_path / "m")
    again = load_pretrained(tmp_path / "m")
    assert again.cfg == model.cfg
    tokens = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens), again(tokens))


def test_load_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_head": 5}, "does not divide d_model"), ({"n_kv_head": 3}, "does not divide n_head")],
)
def test_invalid_shapes_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**SMALL, **kwargs})
