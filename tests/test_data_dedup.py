"""MinHash (+ exact) dedup on planted clusters, the accounting invariant, and resume after a killed task.

Runs the stage in-process (`workers: 1`) with the quality filters off, so only dedup decides.
"""

from __future__ import annotations

import gzip
import json
import random
import string
from pathlib import Path

import pytest

from pipeline.local import local_context
from pipeline.stage import StageContext
from stages.data import stage, tasks
from stages.data.config import DataConfig

FILTERS_OFF = {
    name: {"enabled": False}
    for name in (
        "url_filter",
        "extraction",
        "language",
        "gopher_repetition",
        "gopher_quality",
        "c4_quality",
        "fineweb_quality",
    )
}


def planted_corpus(folder: Path, seed: int = 0) -> dict[str, str]:
    """8 clusters of 2-5 near-duplicates (3 words of 300 changed) + 15 unrelated documents, in 3 files.

    Returns doc id -> cluster name ("single-<n>" for the unrelated ones)."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(5000)]
    rows, cluster_of = [], {}
    for c in range(8):
        base = [rng.choice(vocab) for _ in range(300)]
        for j in range(rng.randint(2, 5)):
            words = list(base)
            for _ in range(3 if j else 0):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            rows.append({"id": f"c{c}-{j}", "text": " ".join(words)})
            cluster_of[f"c{c}-{j}"] = f"c{c}"
    for s in range(15):
        rows.append({"id": f"s{s}", "text": " ".join(rng.choice(vocab) for _ in range(300))})
        cluster_of[f"s{s}"] = f"single-{s}"
    rng.shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(3):
        with open(folder / f"part-{n}.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows[n::3])
    return cluster_of


def make_ctx(root: Path, cfg: DataConfig) -> StageContext:
    return local_context("data", cfg, root)


def config(corpus: Path, **extra) -> DataConfig:
    source = {"name": "planted", "kind": "jsonl", "paths": [str(corpus)]}
    return DataConfig(sources=[source], tasks=3, workers=1, **FILTERS_OFF, **extra)


def kept_ids(output: Path) -> list[str]:
    ids = []
    for shard in sorted((output / "documents").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt") as handle:
            ids += [json.loads(line)["id"] for line in handle]
    return ids


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("planted")
    return folder, planted_corpus(folder)


def test_one_survivor_per_planted_cluster_and_deterministic(tmp_path: Path, corpus):
    folder, cluster_of = corpus
    survivors = []
    for attempt in ("a", "b"):
        metrics = stage.run(make_ctx(tmp_path / attempt, config(folder)))
        ids = kept_ids(tmp_path / attempt / "out")
        assert len(ids) == len(set(ids))
        assert sorted(cluster_of[i] for i in ids) == sorted(set(cluster_of.values()))  # one per cluster, none merged
        assert metrics["documents_in"] == len(cluster_of)
        assert metrics["documents_in"] == metrics["documents_out"] + metrics["removed_dedup"]
        survivors.append(sorted(ids))
    assert survivors[0] == survivors[1]
    stats = json.loads((tmp_path / "a" / "out" / "stats.json").read_text())
    planted_clusters = len({c for c in cluster_of.values() if c.startswith("c")})
    assert stats["dedup"]["clusters"] == planted_clusters
    assert stats["dedup"]["documents_in_clusters"] == sum(c.startswith("c") for c in cluster_of.values())


def test_exact_duplicates_join_the_same_clusters(tmp_path: Path, corpus):
    folder, cluster_of = corpus
    rows = [json.loads(line) for line in (folder / "part-0.jsonl").read_text().splitlines()]
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in ("part-0.jsonl", "part-1.jsonl", "part-2.jsonl"):
        (copies / name).write_text((folder / name).read_text())
    (copies / "part-3.jsonl").write_text("".join(json.dumps({**r, "id": r["id"] + "-copy"}) + "\n" for r in rows[:4]))
    metrics = stage.run(make_ctx(tmp_path / "run", config(copies, exact_dedup={"enabled": True})))
    ids = kept_ids(tmp_path / "run" / "out")
    assert sorted(cluster_of[i.removesuffix("-copy")] for i in ids) == sorted(set(cluster_of.values()))
    assert metrics["removed_dedup_exact_duplicate"] >= 1
    assert metrics["documents_in"] == metrics["documents_out"] + metrics["removed_dedup"]


def test_resume_after_a_killed_task_redoes_only_that_task(tmp_path: Path, corpus, monkeypatch):
    folder, _ = corpus
    cfg = config(folder)
    original = tasks.filter_shard

    def dies_on_rank_1(shard, *args):
        if shard.rank == 1:
            raise RuntimeError("worker killed")
        return original(shard, *args)

    monkeypatch.setattr(tasks, "filter_shard", dies_on_rank_1)
    with pytest.raises(RuntimeError, match="worker killed"):
        stage.run(make_ctx(tmp_path / "run", cfg))
    done = tmp_path / "run" / "scratch" / "markers" / "filter"
    assert sorted(p.name for p in done.iterdir()) == ["00000.json"]

    first_marker = (done / "00000.json").stat().st_mtime_ns
    redone: list[int] = []

    def counting(shard, *args):
        result = original(shard, *args)
        if result.get("fresh"):
            redone.append(shard.rank)
        return result

    monkeypatch.setattr(tasks, "filter_shard", counting)
    stage.run(make_ctx(tmp_path / "run", cfg))
    assert redone == [1, 2]  # rank 0 finished before the crash and is not redone
    assert (done / "00000.json").stat().st_mtime_ns == first_marker
    stats = json.loads((tmp_path / "run" / "out" / "stats.json").read_text())
    clean = stage.run(make_ctx(tmp_path / "clean", cfg))
    assert sorted(kept_ids(tmp_path / "run" / "out")) == sorted(kept_ids(tmp_path / "clean" / "out"))
    assert stats["documents_in"] == clean["documents_in"]  # nothing counted twice
