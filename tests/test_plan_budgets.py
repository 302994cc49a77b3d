"""`z2h plan`'s budgets: every stage of a real config estimates data, tokens, steps, FLOPs, memory per worker
and time on `cluster.hardware`; the estimates follow the model arithmetic; a stage whose memory cannot fit
is refused before anything runs (exit 2, naming the stage, the need and the capacity)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import budget, cli, graph, registry
from pipeline import config as config_io
from pipeline.errors import UsageError
from pipeline.store import open_store
from stages.common import budget as estimate
from stages.common.model import GPTConfig

ROOT = Path(__file__).resolve().parent.parent
REAL = ["gpt2-124m-1gpu.yaml", "gpt2-124m-8gpu.yaml", "gpt-1b-multinode.yaml"]
STAGES = ["data", "tokenizer", "pretrain", "sft", "rl", "eval"]
GPT2 = GPTConfig(vocab_size=50_304, seq_len=1024, n_layer=12, n_head=12, d_model=768, mlp="relu2")


def plan_of(name: str, tmp_path: Path, *overrides: str) -> graph.Plan:
    sets = [f"run.workdir={tmp_path}", *overrides]
    config = config_io.load([ROOT / "configs" / name], sets, registry.stages())
    return graph.build_plan(config, registry.stages(), open_store(None, config.run.workdir))


@pytest.mark.parametrize("name", REAL)
def test_every_stage_of_a_real_config_has_a_budget_that_fits(name: str, tmp_path: Path):
    plan = plan_of(name, tmp_path)
    budgets = budget.estimate(plan)
    assert list(budgets) == STAGES
    for stage in STAGES:
        found = budgets[stage]
        assert found.tokens and found.memory_gb and found.seconds, stage
        assert (found.flops is not None) == (stage not in ("data", "tokenizer")), stage
        assert found.on_gpu == (stage not in ("data", "tokenizer")), stage
    assert budgets["data"].data_bytes and budgets["pretrain"].steps == plan["pretrain"].config.max_steps
    pretrain, model = plan["pretrain"].config, budgets["pretrain"].output["model"]
    assert budgets["pretrain"].flops == model.flops_per_token() * pretrain.max_steps * pretrain.batch_tokens
    assert budgets["pretrain"].seconds == pytest.approx(
        budgets["pretrain"].flops / (pretrain.world * 989e12 * 0.3)  # every config assumes 30% of an H100's peak
    )
    assert budget.refusals(plan, budgets) == []


def test_the_training_memory_estimate_matches_the_h100_measurement():
    """bench/results/h100.md: GPT-2's shape, 16 x 1024 tokens a micro batch, bf16, compiled: 17.3 GiB."""
    memory = estimate.training_memory(GPT2, micro_tokens=16 * 1024, shards=1)
    assert memory.gb == pytest.approx(17.3 * 2**30 / 1e9, rel=0.1)
    # the parts by hand: 16 bytes a parameter; 34 * d bytes a token and layer; 10 bytes a logit
    assert memory.parts.startswith("state 2.6 + activations 5.1 + logits 8.2 + runtime 2.0")
    sharded = estimate.training_memory(GPT2, micro_tokens=16 * 1024, shards=8, tp=2, checkpointing=True)
    assert sharded.gb < memory.gb / 2


def test_a_stage_whose_memory_cannot_fit_is_refused_before_anything_runs(tmp_path: Path, capsys):
    too_big = ["--set", "stages.pretrain.micro_batch=256", "--workdir", str(tmp_path)]
    config = str(ROOT / "configs" / "gpt2-124m-1gpu.yaml")
    assert cli.main(["plan", config, *too_big]) == 2
    out, err = capsys.readouterr()
    assert "budgets: H100 SXM 80GB" in out  # the table is shown, then the refusal
    assert "stages.pretrain: needs ~218.6 GB of GPU memory per worker (state 2.6 + activations 82.1 + logits" in err
    assert "a worker holds 80.0 GB on H100 SXM 80GB (cluster.hardware)" in err
    assert cli.main(["run", config, *too_big]) == 2
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_shared_rl_gpus_hold_a_learner_and_an_actor(tmp_path: Path):
    plan = plan_of("gpt2-124m-1gpu.yaml", tmp_path, "stages.rl.generation_batch=8192")
    rl = budget.estimate(plan)["rl"]
    assert rl.holds_gpus == 1.0 and rl.memory_parts.startswith("learner: state")
    (refusal,) = budget.refusals(plan, budget.estimate(plan))
    assert refusal.startswith("stages.rl: needs ~") and "actor: weights 0.3 + KV cache" in refusal


def test_without_hardware_there_are_no_times_or_refusals(tmp_path: Path):
    plan = plan_of("gpt2-124m-1gpu.yaml", tmp_path, "cluster.hardware=null", "stages.pretrain.micro_batch=256")
    budgets = budget.estimate(plan)
    assert budgets["pretrain"].seconds is None and budgets["pretrain"].memory_gb > 80
    assert budgets["data"].seconds  # CPU stages are timed from this repository's measured rates
    assert budget.refusals(plan, budgets) == []


def test_sizes_unknown_from_the_config_are_said_not_guessed(tmp_path: Path):
    plan = plan_of("gpt2-124m-1gpu.yaml", tmp_path, "stages.data.sources.1.limit=null")
    data = budget.estimate(plan)["data"]
    assert data.data_bytes is None and data.seconds is None
    assert "fineweb_edu: size unknown until read (set take.count or limit)" in data.details


def test_set_reaches_into_lists_by_position():
    raw = {"stages": {"data": {"sources": [{"name": "cc", "take": {"count": 9}}]}}}
    config_io.apply_override(raw, "stages.data.sources.0.take.count=2")
    config_io.apply_override(raw, "stages.data.sources.0.base_url=/mirror")
    assert raw["stages"]["data"]["sources"] == [{"name": "cc", "take": {"count": 2}, "base_url": "/mirror"}]
    for bad, message in (
        ("stages.data.sources.1.name=x", r"stages\.data\.sources is a list of 1; pick an entry \(0\.\.0\)"),
        ("stages.data.sources.first=x", r"stages\.data\.sources is a list of 1"),
        ("stages.data.sources.0.name.x=1", r"stages\.data\.sources\.0\.name is a str, not a section"),
    ):
        with pytest.raises(UsageError, match=message):
            config_io.apply_override(raw, bad)


def test_hardware_is_validated_with_the_config(tmp_path: Path):
    with pytest.raises(UsageError, match=r"cluster\.hardware\.mfu: .*less than or equal to 1"):
        plan_of("gpt2-124m-1gpu.yaml", tmp_path, "cluster.hardware.mfu=1.5")
    with pytest.raises(UsageError, match=r"cluster\.hardware\.flops: .*(Extra inputs|unknown key)"):
        plan_of("gpt2-124m-1gpu.yaml", tmp_path, "cluster.hardware.flops=1")
