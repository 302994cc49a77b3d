"""Eval needs only the models its config names: a base-only eval plans and fingerprints without SFT or
RL stages, and naming a model whose stage the pipeline lacks is a config error saying which."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eval_hub import write_mirror

from pipeline import config as config_io
from pipeline import graph
from pipeline.errors import UsageError
from pipeline.stage import Stage, StageConfig
from pipeline.store import LocalStore
from stages.eval import stage as eval_stage


def _noop(ctx) -> dict[str, float]:
    return {}


class Empty(StageConfig):
    pass


STAGES = {
    "tokenizer": Stage("tokenizer", Empty, _noop),
    "pretrain": Stage("pretrain", Empty, _noop, needs=("tokenizer",)),
    "sft": Stage("sft", Empty, _noop, needs=("pretrain", "tokenizer")),
    "rl": Stage("rl", Empty, _noop, needs=("sft", "tokenizer")),
    "eval": eval_stage,
}


def write_config(tmp_path: Path, stages: list[str], eval_settings: str) -> Path:
    body = "".join(f"  {name}: {{}}\n" for name in stages)
    path = tmp_path / "run.yaml"
    path.write_text(f"run:\n  workdir: {tmp_path / 'work'}\nstages:\n{body}  eval:\n{eval_settings}")
    return path


def plan(path: Path, overrides=()) -> graph.Plan:
    config = config_io.load([path], list(overrides), STAGES)
    return graph.build_plan(config, STAGES, LocalStore(config.run.workdir / "store"))


def test_a_base_only_eval_plans_without_sft_or_rl(tmp_path):
    path = write_config(tmp_path, ["tokenizer", "pretrain"], "    models: [pretrain]\n")
    planned = plan(path)
    assert [s.name for s in planned.stages] == ["tokenizer", "pretrain", "eval"]
    assert planned["eval"].needs == ("tokenizer", "pretrain")
    assert [s.status for s in planned.stages] == ["run", "run", "run"]
    whole = write_config(tmp_path, ["tokenizer", "pretrain", "sft", "rl"], "    models: [pretrain, sft, rl]\n")
    assert plan(whole)["eval"].needs == ("tokenizer", "pretrain", "sft", "rl")
    # The models are the eval's upstream: measuring another set is another fingerprint, upstream untouched.
    both = plan(whole, ["stages.eval.models=[pretrain, sft]"])
    assert both["eval"].needs == ("tokenizer", "pretrain", "sft")
    assert both["eval"].fingerprint != plan(whole)["eval"].fingerprint
    assert both["sft"].fingerprint == plan(whole)["sft"].fingerprint


def test_a_model_whose_stage_is_missing_is_a_config_error(tmp_path):
    path = write_config(tmp_path, ["tokenizer", "pretrain"], "    models: [pretrain, rl]\n")
    with pytest.raises(UsageError) as caught:
        plan(path)
    assert "stages.eval: its settings need stage 'rl', which this config does not define" in str(caught.value)
    with pytest.raises(UsageError) as caught:
        plan(write_config(tmp_path, ["tokenizer", "pretrain", "sft"], "    models: [sft]\n"), ["stages.sft=null"])
    assert (
        "stages.eval: its settings need stage 'sft', which this config removes (stages.sft: null); "
        "change stages.eval or give sft its settings"
    ) in str(caught.value)


def test_local_benchmark_files_are_part_of_the_fingerprint(tmp_path):
    mirror = write_mirror(tmp_path / "hub")
    settings = f"    models: [pretrain]\n    choice: {{}}\n    hub_mirror: {mirror}\n    benchmarks: {{piqa: {{}}}}\n"
    path = write_config(tmp_path, ["tokenizer", "pretrain"], settings)
    before = plan(path)["eval"].fingerprint
    assert plan(path)["eval"].fingerprint == before
    shard = mirror / "ybisk/piqa/plain_text/validation/0000.parquet"
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an edited copy is read again
    assert plan(path)["eval"].fingerprint != before
