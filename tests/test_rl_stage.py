"""The RL stage as the runner runs it: a Ray task that starts rollout actors and a 2-worker Ray Train
learner (DDP), logs to a sqlite MLflow store and registers the policy linked to
the SFT model and the task data. The task is easy for a random model, so reward must rise."""

from __future__ import annotations

import json
import sys

import pytest
import ray
from mlflow import MlflowClient
from ray import cloudpickle
from sft_tiny import write_base_model, write_tokenizer

from pipeline.lineage import experiment_id, start_run
from pipeline.local import local_context
from pipeline.stage import StageContext
from stages.common import tasks
from stages.common.model import load_pretrained
from stages.rl import resources, stage
from stages.rl.config import RLConfig, TaskConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


class VowelStart(tasks.ArithTask):
    """Reward 1 when the reply starts with a vowel: a random model earns it sometimes."""

    name = "vowel_start"

    def reward(self, problem, reply):
        text = reply.lstrip()
        return float(bool(text) and text[0] in "aeiouAEIOU")


tasks.register("vowel_start", VowelStart)


def run_with_test_task(ctx: StageContext) -> dict[str, float]:
    tasks.register("vowel_start", VowelStart)  # in the stage's Ray worker too
    return stage.run(ctx)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[StageContext, dict[str, float], str]:
    root = tmp_path_factory.mktemp("rl")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = experiment_id(uri, "rl-test", root / "artifacts")
    sft = write_base_model(root / "sft", seq_len=64)
    sft_run = start_run(uri, experiment, "sft", {"z2h.stage": "sft"})
    sft_id = sft_run.log_model("sft", sft / "model")
    cfg = RLConfig(
        task=TaskConfig(name="vowel_start", options={"max_steps": 1}),
        steps=6,
        prompts_per_step=8,
        group_size=8,
        max_new_tokens=3,
        lr=1e-2,
        ppo_epochs=2,
        micro_batch=16,
        heldout_problems=12,
        monitor_problems=6,
        eval_every=3,
        pass_k=4,
        rollout_actors=1,
        actor_cpus=1,
        learner_workers=2,
        learner_cpus=0.5,
        torch_threads=1,
    )
    upstream = {"sft": sft, "tokenizer": write_tokenizer(root / "tokenizer")}
    tracker = start_run(uri, experiment, "rl", {"z2h.stage": "rl"})
    runs = {"sft": sft_run.run_id}
    ctx = local_context("rl", cfg, root, upstream=upstream, upstream_runs=runs, seed=3, tracker=tracker, progress=True)
    metrics = ray.get(ray.remote(num_cpus=0)(run_with_test_task).remote(ctx))
    return ctx, metrics, sft_id


def test_stage_runs_grpo_with_ray_actors_and_a_ray_train_learner(finished):
    ctx, metrics, _ = finished
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    assert metrics["reward_last_quarter"] > metrics["reward_first_quarter"] + 0.1
    assert metrics["heldout_problems"] == 12 and "accuracy_gain_se" in metrics
    assert metrics["rollout_tokens_per_s"] > 0 and metrics["learner_tokens_per_s"] > 0
    load_pretrained(ctx.output_dir / "model")
    assert sorted(p.name for p in ctx.output_dir.iterdir()) == ["heldout.jsonl", "model", "stats.json"]
    rows = [json.loads(line) for line in (ctx.output_dir / "heldout.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"id", "answer", "before", "after"} <= set(rows[0])
    stats = json.loads((ctx.output_dir / "stats.json").read_text())
    assert stats["task"]["name"] == "vowel_start" and len(stats["history"]) == 6


def test_lineage_links_the_policy_to_the_sft_model_and_the_task_data(finished):
    ctx, _, sft_id = finished
    client = MlflowClient(ctx.tracker.tracking_uri)
    run = client.get_run(ctx.tracker.run_id)
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.name for m in models] == ["rl"] and models[0].tags["z2h.base_model_id"] == sft_id
    assert sft_id in [m.model_id for m in run.inputs.model_inputs]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"rl/vowel_start/train", "rl/vowel_start/heldout"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "heldout_pass_at_4")] == [0, 3, 6]
    assert len(client.get_metric_history(run.info.run_id, "reward_mean")) == 6
    for name in ("clip_fraction", "kl_ref", "entropy", "learner_tokens_per_s", "rollout_tokens_per_s"):
        assert client.get_metric_history(run.info.run_id, name), name
    assert client.get_metric_history(run.info.run_id, "accuracy_gain")


def test_resources_add_up_rollout_actors_and_learners():
    res = resources(RLConfig(rollout_actors=2, actor_cpus=0.5, learner_workers=2, learner_cpus=0.5))
    assert res.workers == 4 and res.cpus * res.workers == 2
    gpu = resources(RLConfig(rollout_actors=1, actor_gpus=0.25, learner_workers=1, learner_gpus=0.75))
    assert gpu.gpus * gpu.workers == 1


def test_bad_task_config_is_refused_up_front():
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        RLConfig(task=TaskConfig(name="chess"))
    with pytest.raises(ValueError, match="unknown option"):
        RLConfig(task=TaskConfig(name="arith", options={"depth": 2}))
    with pytest.raises(ValueError, match="monitor_problems"):
        RLConfig(heldout_problems=10, monitor_problems=20)
