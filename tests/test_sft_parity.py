"""The sharded finetuning step is the single-process step: FSDP2 (dp=2), DDP (dp=2, with gradient
accumulation) and tensor parallelism (tp=2) on spawned gloo processes reach the single-process
per-step losses and held-out losses within 1e-5 (fp32), and the same weights. The mesh takes its rows from the
same per-step draw, so the one process accumulates as many rows per step as the mesh holds."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from sft_tiny import VOCAB, write_base_model

from stages.common.parallel.spawn import run_local
from stages.sft.train import Job, Settings, train

SEQ = 32
STEPS = 4
MESHES = {
    "dp2-fsdp": (2, dict(dp_mode="fsdp")),
    "dp2-ddp": (2, dict(dp_mode="ddp")),
    "tp2": (2, dict(tp=2, dp_mode="fsdp")),
}


def _rows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable rows: ids count up from a random start. Every fourth row carries no loss at all
    (as padding does); the others carry it everywhere. A row with a masked prompt would leave its
    prompt tokens' embeddings gradients near zero, where Adam's first steps (sign-like) turn
    reduction-order noise into visible updates: that tests Adam, not the mesh."""
    rng = np.random.default_rng(seed)
    ids = (rng.integers(1, VOCAB, size=(count, 1)) + np.arange(SEQ + 1)) % (VOCAB - 1) + 1
    mask = np.ones_like(ids, dtype=np.uint8)
    mask[3::4] = 0
    return ids.astype(np.int64), mask


def _job(model_dir: Path, **settings) -> Job:
    train_ids, train_mask = _rows(64, seed=1)
    heldout_ids, heldout_mask = _rows(5, seed=2)  # odd: one dp rank gets a padding row
    values = dict(
        batch_size=2,
        grad_accum=4,
        steps=STEPS,
        lr=3e-3,
        min_lr_ratio=0.1,
        warmup_steps=1,
        weight_decay=0.0,
        grad_clip=1.0,
        bf16=False,
        eval_every=2,
        log_every=1,
        max_new_tokens=2,
        seed=0,
    )
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    return Job(
        str(model_dir), train_ids, train_mask, heldout_ids, heldout_mask, prompts, 0, Settings(**values | settings)
    )


def _trained(job: Job) -> dict:
    """Rank 0's logged losses, metrics and final weights (run in each spawned process)."""
    logged: list[tuple[dict[str, float], int]] = []
    model, metrics, _ = train(job, lambda m, step: logged.append((m, step)))
    return {
        "train": [m["train_loss"] for m, _ in logged if "train_loss" in m],
        "heldout": [m["heldout_loss"] for m, _ in logged if "heldout_loss" in m],
        "metrics": metrics,
        "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_base_model(tmp_path_factory.mktemp("sft-parity"), seq_len=SEQ)
    return folder / "model"


@pytest.fixture(scope="module")
def reference(base: Path) -> dict:
    return _trained(_job(base))


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_sft_matches_single_process(name: str, base: Path, reference: dict) -> None:
    world, settings = MESHES[name]
    job = _job(base, **settings)
    dp = world // job.settings.tp
    # The same rows per optimizer step: the one process accumulates what the dp ranks hold together.
    job = replace(job, settings=replace(job.settings, grad_accum=job.settings.grad_accum // dp))
    got = run_local(partial(_trained, job), world)
    want = reference
    assert len(got["train"]) == STEPS and got["metrics"]["world_size"] == world
    assert got["train"] == pytest.approx(want["train"], abs=1e-5)
    assert got["heldout"] == pytest.approx(want["heldout"], abs=1e-5)
    assert want["heldout"][-1] < want["heldout"][0] - 0.3  # it trained: the comparison is not vacuous
    assert got["metrics"]["assistant_tokens_trained"] == want["metrics"]["assistant_tokens_trained"]
    assert got["weights"].keys() == want["weights"].keys()
    # Adam's first steps are sign-like: an element whose gradient is ~0 can turn 1e-7 of
    # reduction-order noise into a step of up to lr. Allow a few such elements (under 1%, or one in
    # a small tensor), not the wholesale drift a wrong shard or reduction makes.
    for key, value in want["weights"].items():
        off = int(((got["weights"][key] - value).abs() > 1e-4).sum())
        assert off <= max(1, value.numel() // 100), key
