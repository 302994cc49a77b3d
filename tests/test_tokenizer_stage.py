"""The tokenizer stage run inside a Ray task, as the runner runs it, on small real data."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient
from tokenizer_data import doc_texts, write_documents

from pipeline.lineage import experiment_id, start_run
from pipeline.local import local_context
from pipeline.stage import StageContext
from stages.common.shards import Split
from stages.common.tokenizer import load
from stages.tokenizer import stage
from stages.tokenizer.config import TokenizerConfig
from stages.tokenizer.corpus import CorpusError, is_val

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
SEED = 5
BAD_LINES = (
    json.dumps({"id": "nul", "text": "nul\x00byte"}),
    json.dumps({"id": "surrogate", "text": "lone \ud800 surrogate"}),
    "{not json",
    json.dumps({"id": "no-text", "title": "x"}),
    json.dumps({"id": "empty", "text": "\x00"}),
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_documents(tmp_path_factory.mktemp("data"), doc_texts(), per_file=60, extra_lines=BAD_LINES)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One MLflow store for the module: creating a sqlite store takes seconds."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, experiment_id(uri, "tokenizer-test", folder / "artifacts")


def make_context(tracking: tuple[str, str], tmp_path: Path, data_dir: Path, **config) -> StageContext:
    uri, experiment = tracking
    cfg = TokenizerConfig(
        **{"vocab_size": 1024, "val_fraction": 0.05, "shard_tokens": 40_000, "chunk_chars": 50_000, **config}
    )
    tracker = start_run(uri, experiment, "tokenizer", {"z2h.stage": "tokenizer"})
    return local_context("tokenizer", cfg, tmp_path, upstream={"data": data_dir}, seed=SEED, tracker=tracker)


def run_in_ray(ctx: StageContext) -> dict[str, float]:
    cpus = 0 if stage.resources(ctx.config).workers > 1 else 1
    return ray.get(ray.remote(num_cpus=cpus)(stage.run).remote(ctx))


@pytest.fixture(scope="module")
def two_tasks(
    tmp_path_factory: pytest.TempPathFactory, tracking, data_dir: Path
) -> tuple[StageContext, dict[str, float]]:
    ctx = make_context(tracking, tmp_path_factory.mktemp("two"), data_dir, tasks=2)
    return ctx, run_in_ray(ctx)


def test_shards_give_back_every_document_by_split(two_tasks, data_dir: Path) -> None:
    ctx, metrics = two_tasks
    tokenizer = load(ctx.output_dir / "tokenizer")
    texts = [*doc_texts(), "nulbyte", "lone \ufffd surrogate"]
    ids = [f"doc-{i}" for i in range(len(doc_texts()))] + ["nul", "surrogate"]
    expected = {"train": [], "val": []}
    for doc_id, text in zip(ids, texts, strict=True):
        expected["val" if is_val(doc_id, SEED, ctx.config.val_fraction) else "train"].append(text)
    assert expected["val"], "the test data should hold out at least one document"
    for name, wanted in expected.items():
        split = Split(ctx.output_dir / "shards", name)
        assert split.n_documents == len(wanted) == metrics[f"{name}_documents"]
        assert split.n_tokens == metrics[f"{name}_tokens"]
        for document, text in zip(split.documents(), wanted, strict=True):
            assert document[0] == tokenizer.bos_id and tokenizer.bos_id not in document[1:]
            assert tokenizer.decode(document[1:].tolist()) == text
    assert metrics["train_shards"] > 1


def test_bad_input_is_counted_not_fatal(two_tasks) -> None:
    _, metrics = two_tasks
    assert metrics["corpus_bad_lines"] == 2
    assert metrics["corpus_repaired_documents"] == 3
    assert metrics["corpus_empty_documents"] == 1


def test_metrics_and_stats_reach_mlflow(two_tasks) -> None:
    ctx, metrics = two_tasks
    for key in ("train_bytes_per_token", "val_bytes_per_token", "val_gpt2_bytes_per_token", "encode_mb_per_s"):
        assert metrics[key] > 0
    client = MlflowClient(ctx.tracker.tracking_uri)
    logged = {a.path for a in client.list_artifacts(ctx.tracker.run_id, "tokenizer")}
    assert logged == {"tokenizer/stats.json", "tokenizer/shards.json"}
    assert 2.0 < metrics["train_bytes_per_token"] < 8.0
    assert 0.5 < metrics["val_compression_vs_gpt2"] < 1.5
    assert metrics["vocab_size"] == 1024 and metrics["train_seconds"] > 0
    stats = json.loads((ctx.output_dir / "stats.json").read_text())
    assert stats["metrics"]["train_tokens"] == metrics["train_tokens"]
    assert sum(s["tokens"] for s in stats["shards"]["splits"]["train"]) == metrics["train_tokens"]


def test_outputs_hold_no_absolute_paths(two_tasks) -> None:
    ctx, _ = two_tasks
    for path in ctx.output_dir.rglob("*.json"):
        assert str(ctx.workdir) not in path.read_text(), path


def test_shards_are_identical_with_one_task(two_tasks, tracking, tmp_path: Path, data_dir: Path) -> None:
    ctx2, _ = two_tasks
    ctx1 = make_context(tracking, tmp_path, data_dir, tasks=1)
    run_in_ray(ctx1)
    files = sorted(p.relative_to(ctx2.output_dir) for p in ctx2.output_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ctx1.output_dir) for p in ctx1.output_dir.rglob("*") if p.is_file())
    for name in files:
        if name.name != "stats.json":  # holds timings
            assert (ctx1.output_dir / name).read_bytes() == (ctx2.output_dir / name).read_bytes(), name


def test_rerun_reuses_the_tokenizer_in_scratch(two_tasks) -> None:
    ctx, metrics = two_tasks
    index = (ctx.output_dir / "shards" / "index.json").read_text()
    shutil.rmtree(ctx.output_dir)  # as after a crash: the staging folder is gone, scratch is kept
    ctx.output_dir.mkdir()
    again = run_in_ray(ctx)
    assert again["train_seconds"] == metrics["train_seconds"]
    assert (ctx.output_dir / "shards" / "index.json").read_text() == index


def test_empty_corpus_is_a_clear_error(tracking, tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no documents"):
        stage.run(make_context(tracking, tmp_path, tmp_path / "nothing"))
    empty = tmp_path / "empty"
    write_documents(empty, [], extra_lines=(json.dumps({"id": "x", "text": ""}),))
    with pytest.raises(CorpusError, match="no training text"):
        stage.run(make_context(tracking, tmp_path, empty))


def test_truncated_gzip_keeps_what_came_before(tracking, tmp_path: Path) -> None:
    data = write_documents(tmp_path / "data", doc_texts()[:30], per_file=30)
    part = data / "documents" / "part-00000.jsonl.gz"
    whole = gzip.decompress(part.read_bytes())
    part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])
    metrics = stage.run(make_context(tracking, tmp_path, data, tasks=1, val_fraction=0.0))
    assert metrics["corpus_truncated_files"] == 1
    assert 0 < metrics["train_documents"] < 30
    assert whole.count(b"\n") == 30
