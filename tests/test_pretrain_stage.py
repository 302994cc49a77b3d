"""The pretrain stage as the runner runs it: a Ray task starting a 2-worker Ray Train group
(dp=2) on byte-level shards of real text, with metrics and the model logged to MLflow; and one
worker, which trains inside the stage task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from mlflow import MlflowClient
from tokenizer_data import doc_texts

from pipeline.lineage import experiment_id, start_run
from pipeline.local import local_context
from pipeline.stage import StageContext
from stages.common.model import load_pretrained
from stages.common.shards import ShardWriter, Split, write_index
from stages.common.tokenizer import Tokenizer
from stages.pretrain import stage
from stages.pretrain.checkpoint import complete
from stages.pretrain.config import PretrainConfig

pytestmark = pytest.mark.slow
CONFIG = dict(
    model=dict(seq_len=64, n_layer=2, n_head=2, d_model=64),
    dp=2,
    micro_batch=8,
    batch_tokens=1024,
    max_steps=20,
    lr=1e-2,
    warmup_steps=3,
    eval_every=10,
    eval_batches=4,
    checkpoint_every=10,
    log_every=5,
    max_failures=0,
)


def tokenizer_output(folder: Path) -> Path:
    """A tokenizer-stage output folder: a byte-level tokenizer and train/val shards of real text."""
    tokenizer = Tokenizer.from_ranks({bytes([b]): b for b in range(256)})
    tokenizer.save(folder / "tokenizer")
    texts = doc_texts()
    splits = {}
    for split, part in (("train", texts[10:]), ("val", texts[:10])):
        docs = [np.array([tokenizer.bos_id, *tokenizer.encode(text)]) for text in part]
        writer = ShardWriter(folder / "shards", split, tokenizer.dtype, shard_tokens=200_000)
        writer.add(np.concatenate(docs), np.array([len(d) for d in docs]))
        splits[split] = writer.close()
    write_index(folder / "shards", tokenizer.dtype, tokenizer.vocab_size, tokenizer.bos_id, splits)
    return folder


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, experiment_id(uri, "pretrain-test", folder / "artifacts")


def make_context(root: Path, tracking: tuple[str, str], **overrides) -> StageContext:
    uri, experiment = tracking
    return local_context(
        "pretrain",
        PretrainConfig.model_validate(CONFIG | overrides),
        root,
        upstream={"tokenizer": tokenizer_output(root / "tokenizer")},
        seed=11,
        tracker=start_run(uri, experiment, "pretrain", {"z2h.stage": "pretrain"}),
    )


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory: pytest.TempPathFactory, tracking, ray_session) -> tuple[StageContext, dict[str, float]]:
    ctx = make_context(tmp_path_factory.mktemp("pretrain"), tracking)
    assert stage.resources(ctx.config).workers == 2
    return ctx, ray.get(ray.remote(num_cpus=0)(stage.run).remote(ctx))


def test_model_learns_and_loads(stage_run) -> None:
    ctx, metrics = stage_run
    model = load_pretrained(ctx.output_dir / "model")
    assert model.cfg.vocab_size == 265 and model.cfg.n_layer == 2
    assert metrics["params"] == model.cfg.num_params()
    uniform = math.log(265)
    assert metrics["val_loss"] < uniform - 1.5  # bytes of English: far below uniform
    bits_per_token = metrics["val_loss"] / math.log(2)  # byte-level: a token is a byte, or a <|bos|>
    assert bits_per_token < metrics["val_bpb"] < 1.05 * bits_per_token < 8
    assert metrics["tokens_seen"] == 20 * 1024
    assert metrics["tokens_per_s"] > 0 and 0 < metrics["mfu"] < 1
    stats = json.loads((ctx.output_dir / "train_stats.json").read_text())
    assert stats["metrics"]["val_loss"] == metrics["val_loss"] and stats["config"]["dp"] == 2
    val = Split(ctx.upstream["tokenizer"] / "shards", "val").window(0, 65)
    with torch.no_grad():
        assert model(torch.from_numpy(val[None, :64])).shape == (1, 64, 265)


def test_checkpoints_and_mlflow(stage_run) -> None:
    ctx, _ = stage_run
    assert [p.name for p in complete(ctx.scratch_dir / "checkpoints")] == ["step_00000009", "step_00000019"]
    client = MlflowClient(ctx.tracker.tracking_uri)
    run = client.get_run(ctx.tracker.run_id)
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu", "val/loss", "val/bpb"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(ctx.tracker.run_id, "val/loss")) == 2
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.name for m in models if m.source_run_id == ctx.tracker.run_id] == ["base"]


def test_one_worker_trains_in_the_stage_task(tmp_path: Path, tracking) -> None:
    ctx = make_context(tmp_path, tracking, dp=1, max_steps=4, eval_every=2, checkpoint_every=2)
    assert stage.resources(ctx.config).workers == 1
    metrics = stage.run(ctx)  # no Ray needed: the stage task itself is the only worker
    assert load_pretrained(ctx.output_dir / "model").cfg.vocab_size == 265
    assert metrics["tokens_seen"] == 4 * 1024 and metrics["val_loss"] < math.log(265)
    assert json.loads((ctx.output_dir / "train_stats.json").read_text())["metrics"] == metrics
