"""SFT's starting point (`stages.sft.init`): this run's pretrain stage, a store entry by fingerprint prefix, or a
folder another run wrote. From elsewhere the pipeline needs no pretrain stage, the model's identity is part of
SFT's fingerprint, and a model that does not fit the tokenizer is refused: its vocabulary when the config is
validated, its tokenizer when SFT starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sft_tiny import VOCAB, tokenizer, write_base_model

from pipeline import config as config_io
from pipeline import graph, registry
from pipeline.errors import UsageError
from pipeline.local import local_context
from pipeline.store import open_store
from stages.common.model_folder import TokenizerMismatch
from stages.sft.run import _base_model

FINGERPRINT = "3fa2c0de11aa22bb33cc"
TOKENIZER_FP = "77aa00bb11cc22dd33ee"


def store_entry(workdir: Path, fingerprint: str = FINGERPRINT, seed: int = 0) -> Path:
    """A committed pretrain entry of the run's store, with the tokenizer entry its manifest names."""
    store = workdir / "store"
    entry = write_base_model(store / "pretrain" / fingerprint, seed=seed)
    manifest = {"stage": "pretrain", "fingerprint": fingerprint, "run_id": "r1"}
    manifest["upstream"] = {"tokenizer": TOKENIZER_FP}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    tokenizer().save(store / "tokenizer" / TOKENIZER_FP / "tokenizer")
    return entry


def load(workdir: Path, init: str, **tokenizer_cfg) -> config_io.PipelineConfig:
    raw = {
        "run": {"workdir": str(workdir)},
        "stages": {
            "data": {},
            "tokenizer": {"vocab_size": VOCAB, **tokenizer_cfg},
            "sft": {"init": init, "sources": [{"name": "arith", "kind": "arith", "count": 10}], "workers": 1},
        },
    }
    return config_io.validate(raw, registry.stages())


def planned(config: config_io.PipelineConfig) -> graph.PlannedStage:
    plan = graph.build_plan(config, registry.stages(), open_store(None, config.run.workdir))
    return plan["sft"]


def test_a_store_entry_by_prefix_needs_no_pretrain_stage_and_fixes_the_fingerprint(tmp_path: Path):
    entry = store_entry(tmp_path)
    by_prefix = planned(load(tmp_path, "pretrain/3fa2"))
    assert by_prefix.needs == ("tokenizer",)
    assert by_prefix.config.starting_point().folder == entry / "model"
    # the entry's folder names the same model, so the same fingerprint; another entry, another
    assert planned(load(tmp_path, str(entry))).fingerprint == by_prefix.fingerprint
    other = store_entry(tmp_path, "9b00aa11bb22cc33dd44", seed=1)
    assert planned(load(tmp_path, str(other / "model"))).fingerprint != by_prefix.fingerprint


def test_a_folder_s_identity_follows_its_weights(tmp_path: Path):
    folder = write_base_model(tmp_path / "elsewhere") / "model"
    first = planned(load(tmp_path, str(folder))).fingerprint
    assert planned(load(tmp_path, str(folder))).fingerprint == first
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten
    assert planned(load(tmp_path, str(folder))).fingerprint != first


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ("pretrain", r"stages\.sft: its settings need stage 'pretrain', which this config does not define"),
        ("pretrain/ffff", r"stages\.sft\.init: pretrain/ffff matches no entry holding a model .*there: 3fa2c0de"),
        ("pretrain/", r"stages\.sft\.init: .*pretrain holds no z2h model \(config\.json \+ model\.safetensors"),
        ("tokenizer/77aa", r"stages\.sft\.init: tokenizer/77aa: 'tokenizer' makes no model"),
    ],
)
def test_a_starting_point_that_is_not_there_is_a_config_error(tmp_path: Path, init: str, message: str):
    store_entry(tmp_path)
    with pytest.raises(UsageError, match=message):
        load(tmp_path, init)


def test_an_ambiguous_prefix_and_a_too_small_vocabulary_are_refused(tmp_path: Path):
    store_entry(tmp_path)
    store_entry(tmp_path, "3fa2ffffffffffffffff", seed=1)
    with pytest.raises(UsageError, match=r"init: pretrain/3fa2 matches several entries"):
        load(tmp_path, "pretrain/3fa2")
    with pytest.raises(UsageError, match=rf"init: pretrain/{FINGERPRINT} has {VOCAB} token ids, the tokenizer 600"):
        load(tmp_path, "pretrain/3fa2c", vocab_size=600)


def test_sft_starts_only_from_a_model_trained_with_its_tokenizer(tmp_path: Path):
    entry = store_entry(tmp_path)
    cfg = load(tmp_path, "pretrain/3fa2").stages["sft"]
    ctx = local_context("sft", cfg, tmp_path / "ctx")
    folder, base = _base_model(ctx, tokenizer())
    assert folder == entry / "model" and (base.run_id, base.stage) == ("r1", f"pretrain/{FINGERPRINT}")
    (logged,) = ctx.tracker.artifacts["datasets/base model"]
    assert (logged.name, logged.digest, logged.source) == ("base model", FINGERPRINT, str(entry / "model"))

    # the same model recorded with another tokenizer (trained on other text): refused with both fingerprints
    from stages.tokenizer.train import train_tokenizer

    other, _ = train_tokenizer(["completely different text " * 50, "with other words and merges " * 50], VOCAB)
    other.save(tmp_path / "store" / "tokenizer" / TOKENIZER_FP / "tokenizer")
    with pytest.raises(TokenizerMismatch, match=r"tokenizer mismatch: the model in .* was trained with tokenizer"):
        _base_model(ctx, tokenizer())
