"""Finding the model a model command uses: the latest in the store, a stage, a store entry, a folder,
an MLflow run id (pipeline or stage run), a model the store lost, fetched back from MLflow, and the
place a config names (its store, wherever it is)."""

from __future__ import annotations

import shutil

import pytest
from eval_tiny import FINGERPRINTS, write_model_entry, write_store

from pipeline.config import RunConfig
from pipeline.errors import UsageError
from pipeline.lineage import end_run, experiment_id, start_run
from use.locate import Place, resolve


def place(workdir, uri: str | None = None) -> Place:
    return Place(workdir / "store", uri, workdir / "cache" / "models")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("locate")
    write_store(folder)
    return folder


def test_store_targets(workdir):
    store = workdir / "store"
    latest = resolve(None, place(workdir))
    assert (latest.stage, latest.folder) == ("sft", store / "sft" / FINGERPRINTS["sft"] / "model")
    assert latest.tokenizer == store / "tokenizer" / FINGERPRINTS["tokenizer"] / "tokenizer"
    assert resolve("base", place(workdir)).stage == "pretrain"
    assert resolve("sft/sft00", place(workdir)).folder == latest.folder
    by_path = resolve(str(store / "pretrain" / FINGERPRINTS["pretrain"]), place(workdir))
    assert (by_path.stage, by_path.tokenizer) == ("pretrain", latest.tokenizer)
    with pytest.raises(UsageError, match="no rl model in the store; models in .*sft/sft0"):
        resolve("rl", place(workdir))


def test_a_newer_rl_model_becomes_the_default(tmp_path):
    up = write_store(tmp_path)
    write_model_entry(tmp_path / "store", "rl", {"sft": up["sft"].name, "tokenizer": up["tokenizer"].name}, 3, 9.0)
    found = resolve(None, place(tmp_path))
    assert found.stage == "rl" and found.tokenizer == up["tokenizer"] / "tokenizer"


def test_mlflow_run_ids_resolve_to_the_store_or_to_the_logged_model(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    experiment = experiment_id(uri, "locate", workdir / "mlartifacts")
    parent = start_run(uri, experiment, "tiny-1", {"z2h.kind": "pipeline"})
    runs = {}
    for stage in ("tokenizer", "pretrain", "sft"):
        tags = {"z2h.kind": "stage", "z2h.stage": stage, "z2h.fingerprint": FINGERPRINTS[stage]}
        if stage != "tokenizer":
            tags["z2h.upstream.tokenizer"] = FINGERPRINTS["tokenizer"]
        runs[stage] = start_run(uri, experiment, stage, tags, parent_run_id=parent.run_id)
        end_run(runs[stage], "FINISHED")
    end_run(parent, "FINISHED")
    store = workdir / "store"
    assert resolve(parent.run_id, place(workdir, uri)).folder == store / "sft" / FINGERPRINTS["sft"] / "model"
    assert resolve(runs["pretrain"].run_id, place(workdir, uri)).stage == "pretrain"
    with pytest.raises(UsageError, match="tokenizer stage's; it has no model"):
        resolve(runs["tokenizer"].run_id, place(workdir, uri))

    # A model stage whose store entry is gone: its LoggedModel has the same files.
    lost = write_model_entry(store, "sft", {"tokenizer": FINGERPRINTS["tokenizer"]}, 5, 1.0, fingerprint="sftlost")
    tags = {"z2h.stage": "sft", "z2h.fingerprint": lost.name, "z2h.upstream.tokenizer": FINGERPRINTS["tokenizer"]}
    run = start_run(uri, experiment, "sft", tags)
    run.log_model("sft", lost / "model")
    end_run(run, "FINISHED")
    shutil.rmtree(lost)
    found = resolve(run.run_id, place(workdir, uri))
    assert "from MLflow" in found.label and (found.folder / "model.safetensors").is_file()
    assert found.tokenizer == store / "tokenizer" / FINGERPRINTS["tokenizer"] / "tokenizer"
    with pytest.raises(UsageError, match="pipeline runs in MLflow: .*tiny-1"):
        resolve("ffffffffffffffffffffffffffffffff", place(workdir, uri))


def test_the_place_follows_the_config_store_and_tracking(workdir, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    moved = Place.of(RunConfig(workdir=tmp_path, store=str(workdir / "store")))
    assert moved.store == workdir / "store" and moved.cache == tmp_path / "cache" / "models"
    assert moved.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve("sft", moved).stage == "sft"
    remote = Place.of(RunConfig(workdir=tmp_path, store="s3://bucket/z2h"))
    assert remote.store is None
    with pytest.raises(UsageError, match="run.store s3://bucket/z2h is not a local folder"):
        resolve("sft", remote)
    assert resolve(str(workdir / "store" / "sft" / FINGERPRINTS["sft"]), remote).stage == "sft"  # a folder works
