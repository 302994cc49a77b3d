"""Finding the model an upstream stage registered, from its store entry's manifest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.lineage import Tracker, experiment_id, start_run, upstream_model_id

LOG = logging.getLogger("test")


def test_the_upstream_run_s_logged_model_is_found(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = experiment_id(uri, "lineage-test", tmp_path / "artifacts")
    producer = start_run(uri, experiment, "pretrain", {})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    model_id = producer.log_model("base", tmp_path / "model")
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "manifest.json").write_text(json.dumps({"run_id": producer.run_id}))
    consumer = start_run(uri, experiment, "sft", {})
    assert upstream_model_id(consumer, entry, LOG) == model_id

    silent = start_run(uri, experiment, "pretrain", {})  # finished without registering a model
    (entry / "manifest.json").write_text(json.dumps({"run_id": silent.run_id}))
    assert upstream_model_id(consumer, entry, LOG) is None


def test_an_entry_without_lineage_gives_none_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    tracker = Tracker(f"sqlite:///{tmp_path / 'unused.db'}", "run")
    with caplog.at_level(logging.WARNING):
        assert upstream_model_id(tracker, tmp_path, LOG) is None
    assert "FileNotFoundError" in caplog.text and str(tmp_path) in caplog.text
