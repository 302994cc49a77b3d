"""Impossible meshes and batches are rejected when the config is validated, with the reason;
the shipped configs (tiny section, real-scale GPU configs) validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import config as config_io
from pipeline import registry
from pipeline.errors import UsageError
from stages.data import stage as data_stage
from stages.pretrain import resources
from stages.pretrain import stage as pretrain_stage
from stages.pretrain.config import PretrainConfig
from stages.tokenizer import stage as tokenizer_stage

ROOT = Path(__file__).parent.parent
REGISTRY = {s.name: s for s in (data_stage, tokenizer_stage, pretrain_stage)}
MODEL = {"seq_len": 64, "n_layer": 4, "n_head": 8, "n_kv_head": 4, "d_model": 128}


def validate(**pretrain) -> config_io.PipelineConfig:
    raw = {"stages": {"data": {}, "tokenizer": {}, "pretrain": {"model": MODEL, "batch_tokens": 2048, **pretrain}}}
    return config_io.validate(raw, REGISTRY)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tp": 3}, "stages.pretrain.tp: 3 does not divide n_head=8"),
        ({"tp": 8}, "tp: 8 does not divide n_kv_head=4"),
        ({"pp": 3}, "pp: 3 pipeline stages do not divide n_layer=4"),
        ({"pp": 2, "pp_schedule": "interleaved_1f1b", "stages_per_rank": 4}, "8 pipeline stages do not divide"),
        ({"pp": 2, "pp_microbatches": 3}, "pp_microbatches: 3 does not divide micro_batch=8"),
        ({"dp": 3}, "batch_tokens: 2048 is not a multiple of micro_batch*seq_len*dp=1536"),
        ({"dp": 2, "tp": 2, "workers": 2}, "workers: 2 != dp*tp*pp = 2*2*1 = 4"),
        ({"model": {**MODEL, "n_head": 6}}, "model.n_head: 6 does not divide d_model=128"),
        ({"pp": 2, "pp_layers": [1, 2]}, "pp_layers: [1, 2] must be >= 1 each and sum to n_layer=4"),
        ({"pp": 2, "pp_layers": [0, 4]}, "pp_layers: [0, 4] must be >= 1 each"),
        ({"pp": 2, "pp_layers": [4]}, "pp_layers: 1 entries for 2 pipeline stages"),
        ({"pp_layers": [4]}, "pp_layers: set, but pp=1"),
        ({"dp": 2, "tp": 2, "dp_mode": "ddp"}, "dp_mode: ddp replicates whole models and composes with neither"),
    ],
)
def test_impossible_settings_are_rejected_with_the_reason(settings: dict, message: str) -> None:
    with pytest.raises(UsageError, match="invalid config") as info:
        validate(**settings)
    assert message in str(info.value)


def test_an_uneven_pipeline_split_is_accepted() -> None:
    cfg = validate(pp=2, pp_layers=[1, 3]).stages["pretrain"]
    assert cfg.stage_layers() == [range(0, 1), range(1, 4)]
    assert validate(pp=2).stages["pretrain"].stage_layers() == [range(0, 2), range(2, 4)]


def test_a_full_mesh_is_accepted_and_sized() -> None:
    cfg = validate(pp=2, dp=2, tp=2, workers=8, micro_batch=4, batch_tokens=4096).stages["pretrain"]
    assert cfg.world == 8 and cfg.accumulation == 8 and cfg.n_stages == 2
    assert resources(cfg).workers == 8
    assert cfg.model_copy(update={"pp_schedule": "interleaved_1f1b"}).n_stages == 4


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(UsageError, match="stages.pretrain.tensor_parallel: unknown key"):
        validate(tensor_parallel=2)


@pytest.mark.parametrize("name", ["gpt2-124m-1gpu.yaml", "gpt2-124m-8gpu.yaml", "gpt-1b-multinode.yaml"])
def test_shipped_gpu_configs_validate(name: str) -> None:
    cfg = config_io.load([ROOT / "configs" / name], [], registry.stages())  # six stages: every one is needed
    pretrain: PretrainConfig = cfg.stages["pretrain"]
    assert pretrain.gpus_per_worker == 1 and pretrain.precision == "bf16"
    assert pretrain.world == (pretrain.workers or 1)


def test_tiny_section_validates_and_its_documented_meshes_too() -> None:
    section = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["stages"]["pretrain"]
    base = PretrainConfig.model_validate(section)
    assert base.problems() == [] and base.world == 1
    for mesh in ({"dp": 2}, {"tp": 2}, {"pp": 2}):
        cfg = PretrainConfig.model_validate({**section, "cpus_per_worker": 1, **mesh})
        assert cfg.problems() == [] and cfg.batch_tokens == base.batch_tokens
