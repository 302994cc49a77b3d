"""Input files of the data stage: one that cannot be read, whole or past some point, fails the stage
by name unless its source allows partial input (then it is named in stats.json and counted in the
metrics); local input files are part of the fingerprint, so an edited one is read again."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from pipeline.local import local_context
from stages.data import stage
from stages.data.config import DataConfig
from stages.data.sources import HASHED_BYTES, UnreadableInput, input_identities

OFF = {"enabled": False}
ROWS = [{"id": f"r{i}", "text": f"Document number {i} has some words in it."} for i in range(40)]


def config(paths: list[Path | str], **source) -> DataConfig:
    """Every block off: only reading, accounting and output are exercised, inline (one worker)."""
    blocks = ("url_filter", "extraction", "language", "gopher_repetition", "gopher_quality", "c4_quality")
    return DataConfig(
        sources=[{"name": "docs", "kind": "jsonl", "paths": [str(p) for p in paths], **source}],
        tasks=2,
        workers=1,
        **{name: OFF for name in (*blocks, "fineweb_quality", "minhash")},
    )


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A good file and a gzip file cut in the middle (its first rows are readable)."""
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(ROWS[:3]))
    cut = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(jsonl(ROWS))
    cut.write_bytes(whole[: len(whole) // 2])
    return good, cut


def run_stage(cfg: DataConfig, root: Path):
    ctx = local_context("data", cfg, root)
    return ctx, stage.run(ctx)


def test_a_missing_path_fails_the_stage_before_any_work(inputs, tmp_path: Path) -> None:
    good, _ = inputs
    with pytest.raises(UnreadableInput, match=r"source docs: 1 input file\(s\).*missing\.jsonl.*allow_partial"):
        run_stage(config([good, tmp_path / "missing.jsonl"]), tmp_path / "run")
    assert not (tmp_path / "run" / "scratch" / "markers").exists()


def test_a_file_that_fails_part_way_fails_the_stage_and_leaves_no_marker(inputs, tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput, match=r"cut\.jsonl\.gz \(unreadable_path: EOFError"):
        run_stage(config(list(inputs)), tmp_path / "run")
    markers = sorted((tmp_path / "run" / "scratch" / "markers" / "filter").glob("*.json"))
    assert len(markers) == 1  # the good file's shard; the cut one is read again by a rerun


def test_allow_partial_goes_on_and_names_the_files(inputs, tmp_path: Path) -> None:
    cfg = config([*inputs, tmp_path / "missing.jsonl"], allow_partial=True)
    ctx, metrics = run_stage(cfg, tmp_path / "run")
    stats = json.loads((ctx.output_dir / "stats.json").read_text())
    failed = stats["failed_inputs"]["docs"]
    assert sorted(failed) == ["cut.jsonl.gz", "missing.jsonl"]
    assert failed["cut.jsonl.gz"].startswith("unreadable_path: EOFError")
    assert metrics["failed_input_files"] == 2 and metrics["removed_read_unreadable_path"] == 2
    assert 3 < stats["documents_out"] < 3 + len(ROWS)  # the cut file's rows before the damage are kept
    assert stats["documents_in"] == stats["documents_out"] + sum(stats["removed"].values())


def test_samples_and_unbroken_inputs_name_no_failed_files(inputs, tmp_path: Path) -> None:
    ctx, metrics = run_stage(config(inputs[:1]), tmp_path / "run")
    assert json.loads((ctx.output_dir / "stats.json").read_text())["failed_inputs"] == {}
    assert metrics["failed_input_files"] == 0
    assert stage.inputs is not None and input_identities(DataConfig()) == {}  # the sample corpus: no files


def test_an_edited_input_changes_the_identity_even_at_equal_size_and_mtime(inputs, tmp_path: Path) -> None:
    good, _ = inputs
    cfg = config([tmp_path])  # a folder: every JSONL file in it
    before = input_identities(cfg)
    assert set(before) == {f"docs:{good}", f"docs:{inputs[1]}"}
    stamp = good.stat()
    good.write_bytes(good.read_bytes().replace(b"number 0", b"number 9"))
    os.utime(good, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    after = input_identities(cfg)
    assert after[f"docs:{good}"] != before[f"docs:{good}"] and after[f"docs:{inputs[1]}"] == before[f"docs:{inputs[1]}"]


def test_large_inputs_are_identified_by_size_and_mtime_and_missing_ones_too(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(b" " * (HASHED_BYTES + 1))
    cfg = config([big, tmp_path / "gone.jsonl"])
    identities = input_identities(cfg)
    assert identities[f"docs:{big}"] == f"size:{HASHED_BYTES + 1},mtime_ns:{big.stat().st_mtime_ns}"
    assert identities[f"docs:{tmp_path / 'gone.jsonl'}"].startswith("unreadable:FileNotFoundError")
    os.utime(big, ns=(0, 10**9))
    assert input_identities(cfg)[f"docs:{big}"] != identities[f"docs:{big}"]
    remote = config(["s3://bucket/crawl/*.jsonl.gz"])
    assert input_identities(remote) == {}  # remote files are not listed (no network at plan time)
