"""The shard format and loader: exact documents back, windows across shard borders,
deterministic shuffles, disjoint and complete rank partitions, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.common.shards import ShardError, ShardWriter, Split, WindowLoader, write_index

BOS = 9


def make_documents(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.concatenate([[BOS], rng.integers(0, BOS, rng.integers(0, 40))]) for _ in range(n)]


def write_split(folder: Path, documents: list[np.ndarray], shard_tokens: int, dtype=np.uint16, batch: int = 7) -> None:
    writer = ShardWriter(folder, "train", np.dtype(dtype), shard_tokens)
    for start in range(0, len(documents), batch):
        chunk = documents[start : start + batch]
        writer.add(np.concatenate(chunk), np.array([len(d) for d in chunk]))
    write_index(folder, np.dtype(dtype), BOS + 1, BOS, {"train": writer.close(), "val": []})


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_every_document_comes_back_exactly(tmp_path: Path, dtype) -> None:
    documents = make_documents(300)
    write_split(tmp_path, documents, shard_tokens=500, dtype=dtype)
    split = Split(tmp_path, "train")
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["splits"]["train"]) > 5
    assert all(info["tokens"] >= 500 for info in index["splits"]["train"][:-1])
    assert split.n_documents == len(documents)
    assert split.n_tokens == sum(len(d) for d in documents)
    for i, document in enumerate(documents):
        assert np.array_equal(split.document(i), document)
    assert all(np.array_equal(a, b) for a, b in zip(split.documents(), documents, strict=True))
    assert Split(tmp_path, "val").n_tokens == 0


def test_a_document_longer_than_a_shard_gets_its_own(tmp_path: Path) -> None:
    documents = [np.full(50, BOS), np.full(3, BOS), np.full(2, BOS)]
    write_split(tmp_path, documents, shard_tokens=10, batch=1)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["documents"] for s in index["splits"]["train"]] == [1, 2]


def test_windows_cross_shard_borders(tmp_path: Path) -> None:
    documents = make_documents(100, seed=1)
    write_split(tmp_path, documents, shard_tokens=64)
    stream = np.concatenate(documents)
    split = Split(tmp_path)
    for start in range(0, len(stream) - 33, 17):
        assert np.array_equal(split.window(start, 33), stream[start : start + 33])
    assert split.window(0, len(stream)).dtype == np.int64
    with pytest.raises(IndexError):
        split.window(len(stream) - 2, 3)
    with pytest.raises(IndexError):
        split.document(len(documents))


@pytest.fixture
def split(tmp_path: Path) -> Split:
    write_split(tmp_path, make_documents(400, seed=2), shard_tokens=300)
    return Split(tmp_path)


def test_loader_batches_are_shifted_windows(split: Split) -> None:
    loader = WindowLoader(split, seq_len=16, batch_size=4, seed=3)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    first = int(loader.rank_windows(0)[0])
    assert np.array_equal(x[0], split.window(first * 16, 16))


def test_loader_is_deterministic_by_seed(split: Split) -> None:
    def batches(seed: int) -> list[np.ndarray]:
        loader = WindowLoader(split, seq_len=16, batch_size=4, seed=seed)
        return [loader.next_batch()[0] for _ in range(5)]

    assert all(np.array_equal(a, b) for a, b in zip(batches(1), batches(1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(batches(1), batches(2), strict=True))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_rank_partitions_are_disjoint_and_complete(split: Split, world_size: int) -> None:
    loaders = [WindowLoader(split, 16, 2, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in (0, 1):
        parts = [set(loader.rank_windows(epoch).tolist()) for loader in loaders]
        assert sum(len(p) for p in parts) == loaders[0].n_windows
        assert set().union(*parts) == set(range(loaders[0].n_windows))
    assert len({loader.batches_per_epoch for loader in loaders}) == 1


def test_resume_from_state_dict_continues_exactly(split: Split) -> None:
    loader = WindowLoader(split, seq_len=8, batch_size=3, seed=11, rank=1, world_size=2)
    steps = loader.batches_per_epoch + 3  # past an epoch boundary
    for _ in range(steps):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [loader.next_batch()[0] for _ in range(4)]
    resumed = WindowLoader(split, seq_len=8, batch_size=3, seed=11, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert state["epoch"] == 1
    assert all(np.array_equal(a, resumed.next_batch()[0]) for a in expected)
    other = WindowLoader(split, seq_len=8, batch_size=3, seed=12, rank=1, world_size=2)
    with pytest.raises(ShardError, match="seed"):
        other.load_state_dict(state)


def test_loader_rejects_too_little_data(split: Split) -> None:
    with pytest.raises(ShardError, match="too few"):
        WindowLoader(split, seq_len=split.n_tokens, batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        WindowLoader(split, 8, 1, rank=2, world_size=2)


def test_damaged_shards_are_reported(tmp_path: Path) -> None:
    write_split(tmp_path, make_documents(50), shard_tokens=10_000)
    with pytest.raises(ShardError, match="no split"):
        Split(tmp_path, "test")
    (tmp_path / "train_00000.bin").write_bytes(b"\x00\x00")
    with pytest.raises(ShardError, match="disagree"):
        Split(tmp_path)
    (tmp_path / "index.json").write_text("nope")
    with pytest.raises(ShardError, match="unreadable"):
        Split(tmp_path)
