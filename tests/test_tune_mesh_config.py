"""SFT's and the RL learner's meshes and the rollout actors' placement are checked when the
pipeline config is validated, against the pretrain stage's model shape, with the reason; what the
RL stage asks of the cluster adds up for both placements."""

from __future__ import annotations

import pytest

from pipeline import config as config_io
from pipeline.errors import UsageError
from stages.data import stage as data_stage
from stages.pretrain import stage as pretrain_stage
from stages.rl import resources as rl_resources
from stages.rl import stage as rl_stage
from stages.rl.config import RLConfig
from stages.sft import stage as sft_stage
from stages.tokenizer import stage as tokenizer_stage

REGISTRY = {s.name: s for s in (data_stage, tokenizer_stage, pretrain_stage, sft_stage, rl_stage)}
MODEL = {"seq_len": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64}


def validate(sft: dict | None = None, rl: dict | None = None) -> config_io.PipelineConfig:
    pretrain = {"model": MODEL, "batch_tokens": 512, "micro_batch": 8}
    raw = {"stages": {"data": {}, "tokenizer": {}, "pretrain": pretrain, "sft": sft or {}, "rl": rl or {}}}
    return config_io.validate(raw, REGISTRY)


@pytest.mark.parametrize(
    ("sft", "rl", "message"),
    [
        ({"workers": 4, "tp": 4, "dp_mode": "fsdp"}, None, "stages.sft.tp: 4 does not divide n_kv_head=2"),
        ({"workers": 3, "tp": 3, "dp_mode": "fsdp"}, None, "stages.sft.tp: 3 does not divide n_head=4"),
        ({"workers": 3, "tp": 2}, None, "workers: 3 workers do not form whole tensor-parallel groups of tp=2"),
        ({"tp": 2, "dp_mode": "fsdp", "max_seq_len": 33}, None, "tp: 2 does not divide seq_len=33 (sequence parallel)"),
        ({"pp": 2}, None, "stages.sft.pp: 2, but sft has no pipeline parallelism (pretrain only)"),
        ({"workers": 2, "tp": 2}, None, "stages.sft.dp_mode: ddp replicates whole models"),
        (None, {"learner_workers": 4, "tp": 4, "dp_mode": "fsdp"}, "stages.rl.tp: 4 does not divide n_kv_head=2"),
        (None, {"learner_workers": 3, "tp": 2}, "learner_workers: 3 workers do not form whole tensor-parallel"),
        (None, {"pp": 2}, "stages.rl.pp: 2, but rl has no pipeline parallelism"),
        (None, {"learner_gpus": 0.75, "actor_gpus": 0.25}, "learner_gpus: 0.75 is a fraction, so Ray may place"),
        (
            None,
            {"actor_placement": "shared", "learner_gpus": 0.75, "actor_gpus": 0.25},
            "actor_gpus: shared GPUs need actor_gpus + learner_gpus = 1 with actor_gpus > 0.5",
        ),
        (
            None,
            {"actor_placement": "shared", "learner_gpus": 0.4, "actor_gpus": 0.6, "rollout_actors": 2},
            "rollout_actors: 2 != learner_workers=1",
        ),
        (None, {"actor_placement": "shared"}, "actor_placement: shared puts actors on the learners' GPUs"),
    ],
)
def test_impossible_meshes_and_placements_are_rejected(sft: dict | None, rl: dict | None, message: str) -> None:
    with pytest.raises(UsageError, match="invalid config") as info:
        validate(sft, rl)
    assert message in str(info.value)


def test_a_sharded_sft_and_learner_are_accepted() -> None:
    cfg = validate({"workers": 4, "tp": 2, "dp_mode": "fsdp"}, {"learner_workers": 4, "tp": 2, "dp_mode": "fsdp"})
    assert cfg.stages["sft"].tp == 2 and cfg.stages["rl"].tp == 2


def test_placements_add_up_to_the_gpus_they_use() -> None:
    # Own GPUs: 4 learners on a GPU each, 2 actors sharing a fifth.
    own = RLConfig(learner_workers=4, learner_gpus=1, rollout_actors=2, actor_gpus=0.5)
    assert own.placement_problems() == []
    res = rl_resources(own)
    assert res.workers == 6 and res.gpus * res.workers == pytest.approx(5)
    # Shared: 4 learner GPUs, each also holding one actor: 4 GPUs in all.
    shared = RLConfig(learner_workers=4, learner_gpus=0.4, rollout_actors=4, actor_gpus=0.6, actor_placement="shared")
    assert shared.placement_problems() == []
    res = rl_resources(shared)
    assert res.workers == 8 and res.gpus * res.workers == pytest.approx(4)
    # CPU only (the tiny run): nothing to place on GPUs.
    assert RLConfig().placement_problems() == [] and rl_resources(RLConfig()).gpus == 0
