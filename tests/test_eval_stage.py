"""The eval stage as the runner runs it: inside a Ray task, spreading work units over Ray tasks,
logging its table and samples; the numbers are the same for any number of workers."""

from __future__ import annotations

import json

import pytest
import ray
from eval_tiny import standin_env, write_store

from pipeline.local import RecordingTracker, local_context
from stages.eval import stage
from stages.eval.config import EvalConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
SEED = 11


def config(**overrides) -> EvalConfig:
    settings = dict(
        bpb_windows=6,
        samples=2,
        sample_tokens=8,
        tasks={"arith": 6, "asdiv": 5},
        max_new_tokens=12,
        adherence_prompts=4,
        choice={"mmlu": 6, "commonsenseqa": 6, "piqa": 6, "openbookqa": 6, "boolq": 6},
        unit_size=4,
        workers=2,
    )
    return EvalConfig(**(settings | overrides))


def run_stage(root, upstream, workdir, cfg, tracker=None):
    ctx = local_context("eval", cfg, root, upstream=upstream, seed=SEED, tracker=tracker, workdir=workdir)
    cpus = 0 if stage.resources(cfg).workers > 1 else 1
    env = {"env_vars": standin_env(workdir)}  # inherited by the stage's own tasks
    metrics = ray.get(ray.remote(num_cpus=cpus, runtime_env=env)(stage.run).remote(ctx))
    return ctx, metrics


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    return workdir, write_store(workdir)


@pytest.fixture(scope="module")
def finished(upstream, tmp_path_factory):
    workdir, up = upstream
    root = tmp_path_factory.mktemp("eval")
    return run_stage(root, up, workdir, config(), RecordingTracker())


def test_the_table_has_a_row_per_task_and_a_column_per_model(finished):
    ctx, metrics = finished
    table = json.loads((ctx.output_dir / "table.json").read_text())
    assert table["columns"] == ["base", "sft"]  # no rl upstream: evaluated what exists
    rows = {row["key"]: row for row in table["rows"]}
    assert list(rows) == ["bpb", "arith", "asdiv", "mmlu", "commonsenseqa", "piqa", "openbookqa", "boolq", "adherence"]
    assert set(rows["bpb"]["values"]) == {"base", "sft"} and rows["bpb"]["values"]["base"] > 0
    assert set(rows["arith"]["values"]) == {"sft"}  # generative tasks: chat models only
    assert rows["mmlu"]["n"] == {"base": 6, "sft": 6} and rows["mmlu"]["chance"] == pytest.approx(0.25)
    assert rows["piqa"]["chance"] == pytest.approx(0.5)
    assert 0 <= rows["adherence"]["values"]["sft"] <= 1
    assert metrics["base/bpb"] == rows["bpb"]["values"]["base"] and metrics["models"] == 2
    markdown = (ctx.output_dir / "table.md").read_text()
    assert "| task | metric | n | chance | base | sft |" in markdown and "\\|assistant_end\\|" in markdown
    assert sorted(p.name for p in ctx.output_dir.iterdir()) == [
        "predictions.jsonl",
        "results.json",
        "samples.json",
        "table.json",
        "table.md",
    ]


def test_rows_without_gold_are_counted_and_skipped(finished):
    ctx, _ = finished
    details = json.loads((ctx.output_dir / "results.json").read_text())["models"]["base"]["details"]
    assert details["mmlu"]["skipped"] == {"no_gold": 1, "malformed_options": 1, "invalid_json": 1}
    assert details["openbookqa"]["skipped"]["no_gold"] == 1
    results = json.loads((ctx.output_dir / "results.json").read_text())
    changes = {(c["row"], c["from"], c["to"]): c for c in results["paired_changes"]}
    assert changes[("mmlu", "base", "sft")]["n"] == 6 and ("arith", "base", "sft") not in changes
    sft = results["models"]["sft"]["details"]
    assert sft["asdiv"]["source_skips"]["counts"]["not_a_number"] == 1  # "Mrs. Hilt" is no number


def test_the_table_and_samples_are_logged(finished, upstream, tmp_path, monkeypatch):
    ctx, _ = finished
    # The stage ran in a Ray worker, with its own copy of the tracker: run it here to see the calls.
    tracker = RecordingTracker()
    workdir, up = upstream
    for key, value in standin_env(workdir).items():  # trust the stand-in wheel here too
        monkeypatch.setenv(key, value)
    here = local_context("eval", config(), tmp_path, upstream=up, seed=SEED, tracker=tracker, workdir=workdir)
    stage.run(here)
    assert {"eval/table.json", "eval/table.md", "eval/samples.json", "eval/table_view.json"} <= set(tracker.artifacts)
    assert tracker.artifacts["eval/table.md"] == (ctx.output_dir / "table.md").read_text()
    assert tracker.artifacts["eval/table_view.json"]["sft"][0] > 0  # bits per byte of the SFT model


def test_numbers_are_reproducible_for_a_seed_with_any_number_of_workers(finished, upstream, tmp_path):
    ctx, metrics = finished
    workdir, up = upstream
    again, metrics_again = run_stage(tmp_path, up, workdir, config(workers=1))
    drop = {"eval_seconds"}
    assert {k: v for k, v in metrics.items() if k not in drop} == {
        k: v for k, v in metrics_again.items() if k not in drop
    }
    for name in ("predictions.jsonl", "samples.json", "table.md"):
        assert (again.output_dir / name).read_text() == (ctx.output_dir / name).read_text()
