"""The SFT stage as the runner runs it: inside a Ray task, training on a Ray Train worker group,
logging to a sqlite MLflow store, registering its model linked to the base model."""

from __future__ import annotations

import json

import pytest
import ray
from mlflow import MlflowClient
from sft_tiny import openai_rows, write_base_model, write_jsonl, write_tokenizer

from pipeline.lineage import experiment_id, start_run
from pipeline.local import local_context
from pipeline.stage import StageContext
from stages.common.model import load_pretrained
from stages.sft import stage
from stages.sft.config import SFTConfig, SourceConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[StageContext, dict[str, float], str]:
    root = tmp_path_factory.mktemp("sft")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = experiment_id(uri, "sft-test", root / "artifacts")
    pretrain = write_base_model(root / "pretrain", seq_len=128)
    pretrain_run = start_run(uri, experiment, "pretrain", {"z2h.stage": "pretrain"})
    base_id = pretrain_run.log_model("pretrain", pretrain / "model")
    chats = write_jsonl(root / "chats.jsonl", openai_rows(60, seed=11), ("{broken",))
    cfg = SFTConfig(
        sources=[
            SourceConfig(name="local", kind="jsonl", path=str(chats)),
            SourceConfig(name="arith", kind="arith", count=300, weight=2.0),
        ],
        heldout_fraction=0.1,
        batch_size=8,
        steps=12,
        lr=3e-3,
        warmup_steps=2,
        eval_every=6,
        eval_rows=8,
        adherence_prompts=8,
        max_new_tokens=24,
        workers=2,
        bf16=True,
    )
    upstream = {"pretrain": pretrain, "tokenizer": write_tokenizer(root / "tokenizer")}
    tracker = start_run(uri, experiment, "sft", {"z2h.stage": "sft"})
    runs = {"pretrain": pretrain_run.run_id}
    ctx = local_context("sft", cfg, root, upstream=upstream, upstream_runs=runs, seed=3, tracker=tracker, progress=True)
    metrics = ray.get(ray.remote(num_cpus=0)(stage.run).remote(ctx))
    return ctx, metrics, base_id


def test_stage_trains_on_ray_and_writes_its_outputs(finished):
    ctx, metrics, _ = finished
    assert metrics["world_size"] == 2 and metrics["steps"] == 12
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"]
    assert 0 < metrics["packing_efficiency"] < 1 and metrics["assistant_tokens_per_s"] > 0
    assert metrics["skipped_rows"] >= 1
    load_pretrained(ctx.output_dir / "model")
    stats = json.loads((ctx.output_dir / "stats.json").read_text())
    assert stats["sources"]["local"]["counts"]["invalid_json"] == 1
    assert stats["samples"] and stats["metrics"]["adherence"] == metrics["adherence"]
    assert sorted(p.name for p in ctx.output_dir.iterdir()) == ["model", "stats.json"]


def test_lineage_links_the_sft_model_to_base_model_and_data(finished):
    ctx, _, base_id = finished
    client = MlflowClient(ctx.tracker.tracking_uri)
    run = client.get_run(ctx.tracker.run_id)
    experiment = run.info.experiment_id
    models = client.search_logged_models([experiment], filter_string=f"source_run_id = '{ctx.tracker.run_id}'")
    assert [m.name for m in models] == ["sft"]
    assert models[0].tags["z2h.base_model_id"] == base_id
    assert base_id in [m.model_id for m in run.inputs.model_inputs]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"sft/local", "sft/arith"}
    history = client.get_metric_history(ctx.tracker.run_id, "heldout_loss")
    assert [m.step for m in history] == [0, 6, 12]
