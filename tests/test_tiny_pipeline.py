"""`z2h run configs/tiny.yaml --until tokenizer` through the real CLI, runner, Ray and MLflow,
on a slice of the sample corpus (the package archives are shared with the data tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import cli
from pipeline.store import LocalStore
from stages.common.shards import Split
from stages.common.tokenizer import load

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SLICE = [
    "stages.data.samples.news_pages=10",
    "stages.data.samples.bbc_articles=30",
    "stages.data.samples.wikipedia=30",
    "stages.data.samples.shakespeare_scenes=4",
    "stages.data.samples.warc_files=2",
    "stages.data.tasks=2",
    "stages.tokenizer.vocab_size=512",
]


def test_tiny_config_until_tokenizer(tmp_path: Path):
    workdir = tmp_path / "work"
    packages = REPO / ".z2h" / "cache" / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    (workdir / "cache").mkdir(parents=True)
    (workdir / "cache" / "packages").symlink_to(packages)  # download the archives once per machine
    argv = ["run", str(REPO / "configs" / "tiny.yaml"), "--until", "tokenizer", "--set", f"run.workdir={workdir}"]
    for assignment in SLICE:
        argv += ["--set", assignment]
    assert cli.main(argv) == 0

    store = LocalStore(workdir / "store")
    (data_entry,) = [p for p in (store.root / "data").iterdir() if not p.name.startswith(".")]
    (tok_entry,) = [p for p in (store.root / "tokenizer").iterdir() if not p.name.startswith(".")]
    stats = json.loads((data_entry / "stats.json").read_text())
    assert stats["documents_in"] == stats["documents_out"] + sum(stats["removed"].values())
    assert stats["documents_out"] > 10

    tokenizer = load(tok_entry / "tokenizer")
    assert tokenizer.vocab_size == 512
    train = Split(tok_entry / "shards", "train")
    first = train.document(0)
    assert first[0] == tokenizer.bos_id and tokenizer.decode(first[1:].tolist()).strip()

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`z2h.kind` = 'pipeline'"
    )
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    runs = {r.data.tags["z2h.stage"]: r for r in children}
    assert set(runs) == {"data", "tokenizer"}
    tok_inputs = {
        d.dataset.name: d.dataset.digest
        for d in runs["tokenizer"].inputs.dataset_inputs
        if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "input"
    }
    assert tok_inputs == {"data": data_entry.name}
    assert runs["data"].data.metrics["documents_out"] == stats["documents_out"]
