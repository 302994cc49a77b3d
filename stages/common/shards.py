"""Token shards: the on-disk format, its writer, and the memory-mapped loader pretraining reads.

A shard folder holds `index.json` and, per shard, `<name>.bin` (the documents' tokens back to
back, little-endian uint16 or uint32, each document starting with `<|bos|>`) and `<name>.idx`
(a `.npy` uint64 array of document start offsets, one more than there are documents). Both are
memory-mapped, so random access by window or by document reads only the pages it touches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE = "index.json"
FORMAT_VERSION = 1


class ShardError(ValueError):
    """A shard folder that is missing, corrupt or does not fit the request."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    tokens: int
    documents: int


class ShardWriter:
    """Appends documents to a split's shards, starting a new shard once `shard_tokens` is reached.

    Shards end on document boundaries; a document longer than `shard_tokens` gets a shard of its own."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = (
            folder,
            split,
            np.dtype(dtype).newbyteorder("<"),
            shard_tokens,
        )
        self.shards: list[ShardInfo] = []
        self._file: Any = None
        self._offsets: list[int] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Add documents given as one flat token array and the length of each document."""
        ends = np.cumsum(lengths)
        done = 0  # documents written
        while done < len(ends):
            if self._file is None:
                self._open()
            base = int(ends[done - 1]) if done else 0
            # The shard fills up at the first document whose end reaches the room left.
            room = self.shard_tokens - self._offsets[-1]
            last = min(int(np.searchsorted(ends, base + room)), len(ends) - 1)
            self._file.write(tokens[base : ends[last]].astype(self.dtype, copy=False).tobytes())
            self._offsets += (self._offsets[-1] + ends[done : last + 1] - base).tolist()
            done = last + 1
            if self._offsets[-1] >= self.shard_tokens:
                self._close_shard()

    def close(self) -> list[ShardInfo]:
        if self._file is not None:
            self._close_shard()
        return self.shards

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}"
        self._file = open(self.folder / f"{name}.bin", "wb")  # noqa: SIM115 (closed in _close_shard)
        self._offsets = [0]

    def _close_shard(self) -> None:
        name = Path(self._file.name).stem
        self._file.close()
        self._file = None
        with open(self.folder / f"{name}.idx", "wb") as file:  # a file object: np.save adds no ".npy"
            np.save(file, np.asarray(self._offsets, dtype=np.uint64), allow_pickle=False)
        self.shards.append(ShardInfo(name, self._offsets[-1], len(self._offsets) - 1))


def write_index(
    folder: Path, dtype: np.dtype, vocab_size: int, bos_id: int, splits: Mapping[str, list[ShardInfo]]
) -> dict:
    index = {
        "format": FORMAT_VERSION,
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab_size,
        "bos_id": bos_id,
        "splits": {split: [vars(s) for s in shards] for split, shards in splits.items()},
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


def read_index(folder: Path | str) -> dict:
    path = Path(folder) / INDEX_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable shard index ({exc})") from None


class Split:
    """One split (e.g. "train") of a shard folder as a single memory-mapped token stream."""

    def __init__(self, folder: Path | str, split: str = "train"):
        folder = Path(folder)
        index = read_index(folder)
        if split not in index["splits"]:
            raise ShardError(f"{folder}: no split {split!r} (have {sorted(index['splits'])})")
        self.dtype = np.dtype(index["dtype"]).newbyteorder("<")
        self.vocab_size: int = index["vocab_size"]
        self.bos_id: int = index["bos_id"]
        self.tokens: list[np.ndarray] = []
        self.offsets: list[np.ndarray] = []
        for info in index["splits"][split]:
            tokens = np.memmap(folder / f"{info['name']}.bin", dtype=self.dtype, mode="r")
            offsets = np.load(folder / f"{info['name']}.idx", mmap_mode="r", allow_pickle=False)
            if len(tokens) != info["tokens"] or len(offsets) != info["documents"] + 1 or offsets[-1] != len(tokens):
                raise ShardError(f"{folder}/{info['name']}: shard files disagree with {INDEX_FILE}")
            self.tokens.append(tokens)
            self.offsets.append(offsets)
        self._token_starts = np.cumsum([0] + [len(t) for t in self.tokens])
        self._doc_starts = np.cumsum([0] + [len(o) - 1 for o in self.offsets])

    @property
    def n_tokens(self) -> int:
        return int(self._token_starts[-1])

    @property
    def n_documents(self) -> int:
        return int(self._doc_starts[-1])

    def document(self, i: int) -> np.ndarray:
        """Document `i`'s tokens (with its leading `<|bos|>`), a read-only view into the shard."""
        if not 0 <= i < self.n_documents:
            raise IndexError(f"document {i} out of range 0..{self.n_documents - 1}")
        shard = int(np.searchsorted(self._doc_starts, i, side="right")) - 1
        local = i - int(self._doc_starts[shard])
        offsets = self.offsets[shard]
        return self.tokens[shard][int(offsets[local]) : int(offsets[local + 1])]

    def documents(self) -> Iterator[np.ndarray]:
        for tokens, offsets in zip(self.tokens, self.offsets, strict=True):
            bounds = np.asarray(offsets).tolist()
            for start, end in zip(bounds, bounds[1:], strict=False):
                yield tokens[start:end]

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's stream as int64, across shard borders."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside 0..{self.n_tokens}")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self._token_starts, start, side="right")) - 1
        while filled < length:
            local = start + filled - int(self._token_starts[shard])
            piece = self.tokens[shard][local : local + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out


class WindowLoader:
    """Batches of (inputs, targets) windows for language modelling, for one data-parallel rank.

    Window w covers stream tokens [w*seq_len, w*seq_len + seq_len + 1). Each epoch the windows
    are shuffled with a seed-and-epoch generator; rank r takes every world_size-th window of that
    order, so ranks are disjoint and together complete. Every rank yields the same number of
    batches per epoch. `state_dict` / `load_state_dict` resume at the exact next batch.
    """

    def __init__(self, split: Split, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_windows = max(split.n_tokens - 1, 0) // seq_len
        self.batches_per_epoch = self.n_windows // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ShardError(
                f"{split.n_tokens} tokens make {self.n_windows} windows of {seq_len}: "
                f"too few for {world_size} rank(s) x batch {batch_size}"
            )
        self.epoch = 0
        self.batch = 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, this rank's windows)

    def rank_windows(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._order = (epoch, order[self.rank :: self.world_size])
        return self._order[1]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        windows = self.rank_windows(self.epoch)[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
        rows = np.stack([self.split.window(int(w) * self.seq_len, self.seq_len + 1) for w in windows])
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "n_windows": self.n_windows,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        mine = self.state_dict()
        fixed = ("seed", "seq_len", "batch_size", "world_size", "n_windows")
        clash = {k: (state.get(k), mine[k]) for k in fixed if state.get(k) != mine[k]}
        if clash:
            raise ShardError(f"cannot resume: saved vs current {clash}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
