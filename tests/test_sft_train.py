"""The finetuning loop in one plain process (no Ray): it lowers held-out assistant loss."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from sft_tiny import tokenizer, write_base_model

from stages.common.chat import ASSISTANT_END
from stages.sft.config import SFTConfig, SourceConfig
from stages.sft.data import prepare
from stages.sft.train import Job, Settings, lr_at, train


def _settings(**overrides) -> Settings:
    values = dict(
        batch_size=8,
        grad_accum=2,
        steps=20,
        lr=3e-3,
        min_lr_ratio=0.1,
        warmup_steps=3,
        weight_decay=0.0,
        grad_clip=1.0,
        bf16=False,
        eval_every=10,
        log_every=5,
        max_new_tokens=24,
        seed=0,
    )
    return Settings(**{**values, **overrides})


def test_short_sft_run_lowers_heldout_assistant_loss(tmp_path: Path):
    base = write_base_model(tmp_path / "pretrain", seq_len=128)
    cfg = SFTConfig(
        sources=[SourceConfig(name="arith", kind="arith", count=200)],
        heldout_fraction=0.1,
        max_new_tokens=24,
        adherence_prompts=8,
        eval_rows=8,
    )
    data = prepare(cfg, tokenizer(), 128, 0, tmp_path, logging.getLogger("test"))
    job = Job(
        str(base / "model"),
        data.train.ids,
        data.train.mask,
        data.heldout.ids,
        data.heldout.mask,
        data.prompts,
        tokenizer().special(ASSISTANT_END),
        _settings(),
        data.prompt_tags,
    )
    logged: list[tuple[dict[str, float], int]] = []
    model, metrics, replies = train(job, lambda m, step: logged.append((m, step)))
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"] - 1.5
    assert metrics["assistant_tokens_trained"] > 0 and metrics["assistant_tokens_per_s"] > 0
    assert 0.0 <= metrics["adherence"] <= 1.0 and "adherence_arith" in metrics
    assert len(replies) == len(data.prompts) and all(0 < len(r) <= 24 for r in replies)
    steps_logged = [step for m, step in logged if "heldout_loss" in m]
    assert steps_logged == [0, 10, 20]
    assert isinstance(model, torch.nn.Module)


def test_lr_warms_up_then_decays_to_the_floor():
    s = _settings(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, s) == 0.1 and lr_at(9, s) == 1.0
    assert lr_at(10, s) == 1.0 and abs(lr_at(100, s) - 0.1) < 1e-9
    assert all(lr_at(i, s) >= lr_at(i + 1, s) for i in range(10, 100))
