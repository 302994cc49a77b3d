"""Parquet is read one record batch at a time: memory stays flat however big the file (real Hub shards
are ~2 GB). Measured on a 64 MB file of 64 row groups: Arrow's own allocations (pyarrow's memory pool)
and Python's (tracemalloc) while every row goes by, against the size of the data."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.common.rows import read_parquet
from stages.data.config import SourceConfig
from stages.data.funnel import Tally
from stages.data.readers import Shard, open_source

ROWS, ROW_CHARS, ROWS_PER_GROUP = 32_000, 2000, 500
DATA_BYTES = ROWS * ROW_CHARS


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory) -> Path:
    """~64 MB of incompressible text, uncompressed, in 64 row groups (plus a column nobody asks for)."""
    path = tmp_path_factory.mktemp("parquet") / "big.parquet"
    writer = None
    for start in range(0, ROWS, ROWS_PER_GROUP):
        texts = [os.urandom(ROW_CHARS // 2).hex() for _ in range(ROWS_PER_GROUP)]
        ids = [str(i) for i in range(start, start + ROWS_PER_GROUP)]
        table = pa.table({"text": texts, "id": ids, "other": texts})
        writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table)
    assert writer is not None
    writer.close()
    assert pq.ParquetFile(path).num_row_groups == ROWS // ROWS_PER_GROUP
    return path


def peak_while_reading(rows: Iterable) -> tuple[int, int, int]:
    """(rows seen, highest Arrow allocation above the start, Python's peak) while `rows` is consumed."""
    baseline, arrow_peak, count = pa.total_allocated_bytes(), 0, 0
    tracemalloc.start()
    try:
        for _ in rows:
            count += 1
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - baseline)
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return count, arrow_peak, python_peak


def test_shared_parquet_reader_keeps_memory_flat(big_parquet: Path):
    count, arrow_peak, python_peak = peak_while_reading(read_parquet(big_parquet))
    assert count == ROWS
    # whole (or with pyarrow's default pre_buffer) the file held 132 MB of Python bytes here; batches ~3 MB
    assert arrow_peak < DATA_BYTES / 8 and python_peak < DATA_BYTES / 8, (arrow_peak, python_peak)


def test_data_stage_parquet_reader_keeps_memory_flat(big_parquet: Path):
    source = SourceConfig(name="big", kind="parquet", paths=[str(big_parquet)])
    tally = Tally()
    count, arrow_peak, python_peak = peak_while_reading(
        open_source(Shard(0, source, (str(big_parquet),)), tally, 10**6)
    )
    assert count == ROWS and tally.docs["read.out"] == ROWS
    assert arrow_peak < DATA_BYTES / 8 and python_peak < DATA_BYTES / 8, (arrow_peak, python_peak)
