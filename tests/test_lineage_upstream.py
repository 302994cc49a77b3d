"""Finding the model an upstream stage registered, from the run that produced its output."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.lineage import Tracker, experiment_id, start_run, upstream_model_id
from pipeline.stage import UpstreamOutput

LOG = logging.getLogger("test")


def test_the_upstream_run_s_logged_model_is_found(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = experiment_id(uri, "lineage-test", tmp_path / "artifacts")
    producer = start_run(uri, experiment, "pretrain", {})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    model_id = producer.log_model("base", tmp_path / "model")
    consumer = start_run(uri, experiment, "sft", {})
    assert upstream_model_id(consumer, UpstreamOutput("pretrain", tmp_path, producer.run_id), LOG) == model_id

    silent = start_run(uri, experiment, "pretrain", {})  # finished without registering a model
    assert upstream_model_id(consumer, UpstreamOutput("pretrain", tmp_path, silent.run_id), LOG) is None


def test_an_output_without_lineage_gives_none_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    tracker = Tracker(f"sqlite:///{tmp_path / 'unused.db'}", "run")
    with caplog.at_level(logging.WARNING):
        assert upstream_model_id(tracker, UpstreamOutput("pretrain", tmp_path, None), LOG) is None
        assert upstream_model_id(tracker, UpstreamOutput("pretrain", tmp_path, "no-such-run"), LOG) is None
    assert "no run recorded for pretrain" in caplog.text and str(tmp_path) in caplog.text
    assert "no model lineage for pretrain" in caplog.text
