"""The whole data stage on a small slice of the sample corpus, under real Ray, tracked in MLflow."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline.local import local_context, mlflow_tracker
from stages.data import stage
from stages.data.config import DataConfig

REPO = Path(__file__).resolve().parents[1]
# The corpus and the downloaded package archives are cached in the default work dir, as `z2h samples` does.
WORKDIR = REPO / ".z2h"
SLICE = {"news_pages": 12, "bbc_articles": 40, "wikipedia": 40, "shakespeare_scenes": 6, "warc_files": 3}

pytestmark = pytest.mark.slow


def test_stage_on_sample_slice_under_ray(tmp_path: Path, ray_session):
    tracker = mlflow_tracker(f"sqlite:///{tmp_path}/mlflow.db", "z2h-test", "data", tmp_path / "artifacts")
    cfg = DataConfig(samples=SLICE, tasks=3, workers=2)
    ctx = local_context("data", cfg, tmp_path, seed=1337, tracker=tracker, workdir=WORKDIR)
    metrics = stage.run(ctx)

    stats = json.loads((ctx.output_dir / "stats.json").read_text())
    assert stats["documents_in"] == stats["documents_out"] + sum(stats["removed"].values())
    assert metrics["documents_out"] == stats["documents_out"] > 0
    blocks = [b["block"] for b in stats["blocks"]]
    assert blocks == [
        "read",
        "url_filter",
        "extraction",
        "language",
        "gopher_repetition",
        "gopher_quality",
        "c4_quality",
        "fineweb_quality",
        "dedup",
    ]
    for problem in ("http_status", "empty_payload", "no_http_headers", "malformed_record", "truncated_file"):
        assert stats["removed"][f"read.{problem}"] >= 1, problem
    assert stats["removed"]["url_filter.domain"] + stats["removed"].get("url_filter.subdomain", 0) >= 1
    assert stats["removed"]["language.not_en"] >= 1 and stats["languages"]["en"] > 0
    assert stats["dedup"]["clusters"] >= 1

    records = []
    for shard in sorted((ctx.output_dir / "documents").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt") as handle:
            records += [json.loads(line) for line in handle]
    assert len(records) == stats["documents_out"]
    assert {"id", "text", "url", "language", "language_score", "source", "metadata"} <= set(records[0])
    assert {r["source"] for r in records} == {"samples"} and {r["language"] for r in records} == {"en"}
    assert len({r["id"] for r in records}) == len(records)
    assert any((ctx.output_dir / "removed").glob("url_filter.*.jsonl.gz"))
    assert str(tmp_path) not in (ctx.output_dir / "stats.json").read_text()  # outputs hold no absolute paths

    run = tracker.client.get_run(tracker.run_id)
    assert run.data.metrics["documents_out"] == stats["documents_out"]
    artifacts = {a.path for a in tracker.client.list_artifacts(tracker.run_id, "data")}
    assert "data/funnel.json" in artifacts
