"""The MLflow Model Registry on a sqlite store: a pipeline run registers its models once each, with
aliases (base, sft, rl) and lineage tags; a rerun that reuses a stage adds no version; model commands
resolve `models:/<name>@<alias>` (and `/<version>`, `@latest`) to the producing stage's model, and an
export of a registered model is logged to the run that produced it."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_tiny import FINGERPRINTS, write_store

from pipeline.errors import UsageError
from pipeline.lineage import end_run, experiment_id, start_run
from pipeline.model_registry import register
from pipeline.store import Manifest
from use.export import export
from use.locate import Place, resolve


def _stage_run(uri, experiment, parent, stage, extra=None, model_dir=None, model_name=None):
    tags = {"z2h.kind": "stage", "z2h.stage": stage, "z2h.fingerprint": FINGERPRINTS[stage]}
    if stage != "tokenizer":
        tags["z2h.upstream.tokenizer"] = FINGERPRINTS["tokenizer"]
    run = start_run(uri, experiment, stage, tags | (extra or {}), parent_run_id=parent.run_id)
    if model_dir is not None:
        run.log_model(model_name, model_dir)
    end_run(run, "FINISHED")
    return run


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Two pipeline runs of `tiny`: the first builds tokenizer, pretrain and sft; the second reuses
    tokenizer and pretrain (cache hits) and builds a new sft."""
    workdir = tmp_path_factory.mktemp("registry")
    entries = write_store(workdir)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    experiment = experiment_id(uri, "tiny", workdir / "mlartifacts")
    first = start_run(uri, experiment, "tiny-1", {"z2h.kind": "pipeline"})
    runs = {
        "tokenizer": _stage_run(uri, experiment, first, "tokenizer"),
        "pretrain": _stage_run(uri, experiment, first, "pretrain", None, entries["pretrain"] / "model", "base"),
        "sft": _stage_run(uri, experiment, first, "sft", None, entries["sft"] / "model", "sft"),
    }
    registered_first = register(first, "tiny", [r.run_id for r in runs.values()])
    second = start_run(uri, experiment, "tiny-2", {"z2h.kind": "pipeline"})
    hits = [
        _stage_run(uri, experiment, second, stage, {"z2h.cache": "hit", "z2h.producer_run_id": runs[stage].run_id})
        for stage in ("tokenizer", "pretrain")
    ]
    new_sft = _stage_run(uri, experiment, second, "sft", None, entries["sft"] / "model", "sft")
    registered_second = register(second, "tiny", [*(r.run_id for r in hits), new_sft.run_id])
    manifest = Manifest.from_json((entries["sft"] / "manifest.json").read_text())
    manifest.run_id = new_sft.run_id  # the store entry names the run that produced it, as the runner writes it
    (entries["sft"] / "manifest.json").write_text(manifest.to_json())
    return {
        "workdir": workdir,
        "uri": uri,
        "runs": runs,
        "new_sft": new_sft,
        "first": registered_first,
        "second": registered_second,
        "pipelines": (first, second),
    }


def test_each_logged_model_is_one_version_and_aliases_follow_the_latest_run(registry):
    from mlflow import MlflowClient

    first, second = registry["first"], registry["second"]
    assert [(r.alias, r.version, r.new) for r in first] == [("base", "1", True), ("sft", "2", True)]
    assert [(r.alias, r.version, r.new) for r in second] == [("base", "1", False), ("sft", "3", True)]
    client = MlflowClient(registry["uri"])
    model = client.get_registered_model("tiny")
    assert {alias: str(v) for alias, v in model.aliases.items()} == {"base": "1", "sft": "3"}
    version = client.get_model_version("tiny", "1")
    assert version.run_id == registry["runs"]["pretrain"].run_id
    assert version.tags["z2h.fingerprint"] == FINGERPRINTS["pretrain"]
    assert version.tags["z2h.upstream.tokenizer"] == FINGERPRINTS["tokenizer"]
    assert version.tags["z2h.pipeline_run_id"] == registry["pipelines"][0].run_id
    assert client.get_run(registry["pipelines"][1].run_id).data.tags["z2h.registered"] == "base=v1, sft=v3"


def test_registered_model_targets_resolve_to_the_producing_stage_s_model(registry):
    workdir = registry["workdir"]
    place = Place(workdir / "store", registry["uri"], workdir / "cache" / "models")
    store = workdir / "store"
    assert resolve("models:/tiny@base", place).folder == store / "pretrain" / FINGERPRINTS["pretrain"] / "model"
    sft = resolve("models:/tiny@sft", place)
    assert (sft.stage, sft.folder) == ("sft", store / "sft" / FINGERPRINTS["sft"] / "model")
    assert registry["new_sft"].run_id in sft.label
    assert registry["new_sft"].run_id in resolve("models:/tiny@latest", place).label
    assert registry["runs"]["sft"].run_id in resolve("models:/tiny/2", place).label
    with pytest.raises(UsageError, match=r"no alias 'rl' \(aliases: @base, @sft, or @latest\)"):
        resolve("models:/tiny@rl", place)
    with pytest.raises(UsageError, match=r"no registered model 'small' \(registered: tiny\)"):
        resolve("models:/small@sft", place)
    with pytest.raises(UsageError, match="has no version 9"):
        resolve("models:/tiny/9", place)
    with pytest.raises(UsageError, match="expected models:/<name>@<alias>"):
        resolve("models:/tiny", place)


def test_an_export_is_logged_to_the_run_that_produced_the_model(registry, tmp_path):
    from mlflow import MlflowClient

    workdir, uri = registry["workdir"], registry["uri"]
    found = resolve("models:/tiny@sft", Place(workdir / "store", uri, workdir / "cache" / "models"))
    done = export(found, tmp_path / "hf", tracking_uri=uri)
    producer = registry["new_sft"].run_id
    assert done.logged_to == producer and done.architecture == "Qwen3ForCausalLM"
    logged = {Path(a.path).name for a in MlflowClient(uri).list_artifacts(producer, "hf")}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= logged
    card = (tmp_path / "hf" / "README.md").read_text()
    assert producer in card and registry["pipelines"][1].run_id in card  # the stage run and its pipeline run


def test_z2h_export_on_the_command_line(registry, tmp_path, capsys):
    from pipeline import cli

    out, workdir = tmp_path / "base", registry["workdir"]
    assert cli.main(["export", "models:/tiny@base", str(out), "--workdir", str(workdir), "--no-log"]) == 0
    assert "as Qwen3ForCausalLM to" in capsys.readouterr().out
    assert cli.main(["export", "models:/tiny@base", str(out), "--workdir", str(workdir)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
