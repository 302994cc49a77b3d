"""The data stage's real-scale inputs, offline: a CommonCrawl listing and its slices, Hub datasets by
config and split divided among tasks by file, sources filtered before, and bad input named up front."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from hub_support import write_crawl, write_hub_repo

from pipeline.errors import UsageError
from pipeline.local import local_context
from stages.common.rows import SourceError
from stages.data import stage
from stages.data.config import DataConfig, SourceConfig
from stages.data.funnel import Tally
from stages.data.listing import listing_uri
from stages.data.readers import open_source
from stages.data.sources import input_identities, plan_shards, source_files

CRAWL = "CC-MAIN-2024-18"


def crawl_source(base: Path, **fields) -> SourceConfig:
    return SourceConfig(name="cc", kind="warc", base_url=str(base), **({"crawl": CRAWL} | fields))


def read(cfg: DataConfig) -> dict[str, list[str]]:
    """Document ids per source, over every shard the stage would plan."""
    shards, problems = plan_shards(cfg, cfg.sources)
    assert problems == []
    found: dict[str, list[str]] = {}
    for shard in shards:
        for doc in open_source(shard, Tally(), cfg.max_page_bytes):
            found.setdefault(doc.metadata["source"], []).append(doc.metadata.get("url") or doc.id)
    return found


def test_a_crawl_listing_is_resolved_under_the_base_url_and_sliced(tmp_path: Path):
    listed = write_crawl(tmp_path, CRAWL, files=7)
    files, _ = source_files(crawl_source(tmp_path))
    assert files == [f"{tmp_path}/{path}" for path in listed]
    listing = str(tmp_path / f"crawl-data/{CRAWL}/warc.paths.gz")
    sliced, _ = source_files(crawl_source(tmp_path, crawl=None, listing=listing, take={"start": 1, "every": 2}))
    assert sliced == files[1::2]
    first, _ = source_files(crawl_source(tmp_path, take={"count": 3}))
    assert first == files[:3]
    assert listing_uri(SourceConfig(name="wet", kind="wet", crawl=CRAWL)) == (
        f"https://data.commoncrawl.org/crawl-data/{CRAWL}/wet.paths.gz"
    )

    cfg = DataConfig(sources=[crawl_source(tmp_path, take={"start": 2, "every": 2, "count": 2})], tasks=4)
    urls = read(cfg)["cc"]
    assert sorted(urls) == [f"https://example.com/f{f}/p{p}" for f in (2, 4) for p in range(2)]
    # the fingerprint sees the listing and the WARC files of the slice, not the others
    identities = input_identities(cfg)
    assert sorted(Path(key.split(":", 1)[1]).name for key in identities) == sorted(
        ["warc.paths.gz", Path(files[2]).name, Path(files[4]).name]
    )


def test_a_slice_beyond_the_listing_names_the_listing_and_its_length(tmp_path: Path):
    write_crawl(tmp_path, CRAWL, files=5)
    listing = f"{tmp_path}/crawl-data/{CRAWL}/warc.paths.gz"
    for take in ({"start": 5}, {"every": 2, "count": 4}):
        source = crawl_source(tmp_path, take=take)
        with pytest.raises(
            SourceError, match=rf"^source cc: take .* reaches past listing {listing}, which has 5 files"
        ):
            source_files(source)
        with pytest.raises(UsageError, match="which has 5 files"):  # when the run is planned: nothing has run
            input_identities(DataConfig(sources=[source]))


def test_a_listing_that_cannot_be_read_is_named(tmp_path: Path):
    missing = crawl_source(tmp_path, crawl="CC-MAIN-2030-01")
    with pytest.raises(SourceError, match=r"^source cc: listing .*CC-MAIN-2030-01/warc.paths.gz cannot be read"):
        source_files(missing)
    with pytest.raises(ValueError, match="exactly one of `paths`, `listing` or `crawl`"):
        crawl_source(tmp_path, paths=["x.warc.gz"])
    with pytest.raises(ValueError, match="`listing` and `crawl` are for kinds warc and wet"):
        SourceConfig(name="t", kind="jsonl", paths=["x.jsonl"], crawl=CRAWL)


def edu_repo(root: Path, files: int, rows_per_file: int = 5) -> Path:
    """FineWeb-Edu's layout: config `sample-10BT` is `sample/10BT/*.parquet` (README metadata); another
    config's files sit beside it and must not be read."""
    shards = {
        f"sample/10BT/{n:03d}_00000.parquet": [
            {"text": f"Edu text {n}-{r}.", "id": f"<urn:{n}-{r}>", "url": f"https://edu.example/{n}/{r}"}
            for r in range(rows_per_file)
        ]
        for n in range(files)
    }
    shards["data/CC-MAIN-2024-10/000_00000.parquet"] = [{"text": "other config", "id": "x", "url": "https://x/"}]
    configs = {"default": {"train": "data/*/*"}, "sample-10BT": {"train": "sample/10BT/*"}}
    return write_hub_repo(root, shards, configs)


@pytest.mark.parametrize(("files", "tasks"), [(4, 4), (5, 2), (7, 3), (2, 4)])
def test_hub_files_are_divided_among_tasks_and_every_row_is_read_once(tmp_path: Path, files: int, tasks: int):
    repo = edu_repo(tmp_path / "fineweb-edu", files)
    source = SourceConfig(name="edu", kind="hf", dataset=str(repo), subset="sample-10BT")
    cfg = DataConfig(sources=[source], tasks=tasks)
    shards, _ = plan_shards(cfg, cfg.sources)
    assert len(shards) == min(files, tasks)
    owned = Counter(path for shard in shards for path in shard.files)
    assert len(owned) == files and set(owned.values()) == {1}  # each file in exactly one task
    urls = read(cfg)["edu"]
    assert sorted(urls) == sorted(f"https://edu.example/{n}/{r}" for n in range(files) for r in range(5))


def test_a_row_limit_is_shared_by_the_tasks(tmp_path: Path):
    repo = edu_repo(tmp_path / "fineweb-edu", 3)
    cfg = DataConfig(sources=[{"name": "edu", "kind": "hf", "dataset": str(repo), "subset": "sample-10BT", "limit": 7}])
    assert len(read(cfg)["edu"]) == 7


def test_hub_layouts_without_metadata(tmp_path: Path):
    rows = [{"text": f"row {i}", "id": str(i)} for i in range(3)]
    # openai/gsm8k-like config folders, a config folder of split folders, and the default `data/` layout
    write_hub_repo(tmp_path / "a", {"main/train-00000-of-00001.parquet": rows, "main/test-00000-of-00001.parquet": []})
    write_hub_repo(tmp_path / "b", {"all/train/0000.parquet": rows, "all/test/0000.parquet": rows[:1]})
    write_hub_repo(
        tmp_path / "c", {"data/train-00000-of-00002.jsonl": rows[:2], "data/train-00001-of-00002.jsonl": rows[2:]}
    )
    for folder, subset in (("a", "main"), ("b", "all"), ("c", None)):
        source = SourceConfig(name="t", kind="hf", dataset=str(tmp_path / folder), subset=subset)
        cfg = DataConfig(sources=[source], tasks=2)
        assert sorted(read(cfg)["t"]) == ["0", "1", "2"], folder


def test_hub_dataset_problems_name_the_source_key_and_reason(tmp_path: Path, monkeypatch):
    repo = edu_repo(tmp_path / "fineweb-edu", 2)

    def fails(match: str, **fields) -> None:
        source = SourceConfig(name="edu", kind="hf", **({"dataset": str(repo), "subset": "sample-10BT"} | fields))
        with pytest.raises(SourceError, match=match) as raised:
            source_files(source)
        assert "\n" not in str(raised.value)
        with pytest.raises(UsageError, match=match):  # a local folder: refused when the run is planned
            input_identities(DataConfig(sources=[source]))

    fails(
        r"^source edu: dataset .* config 'sample-350BT' split 'train': no such config \(it has: default, sample-10BT\)",
        subset="sample-350BT",
    )
    fails(r"^source edu: dataset .* split 'validation': no such split \(it has: train\)", split="validation")
    fails(
        r"^source edu: .*\(text_key\): no column 'content' in 000_00000.parquet \(columns: text, id, url\)",
        text_key="content",
    )
    fails(r"take start=0 every=1 count=3 reaches past dataset .* which has 2 files", take={"count": 3})

    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    remote = SourceConfig(name="edu", kind="hf", dataset="HuggingFaceFW/fineweb-edu", subset="sample-10BT")
    assert input_identities(DataConfig(sources=[remote])) == {}  # the Hub is not asked when the run is planned
    with pytest.raises(
        SourceError, match=r"^source edu: dataset 'HuggingFaceFW/fineweb-edu' config 'sample-10BT'.*cannot be reached"
    ):
        source_files(remote)


def dup_rows(prefix: str) -> list[dict]:
    """Two copies of one text and a short line every quality filter would drop."""
    text = " ".join(f"{prefix} word{i} about the council budget and the bridge repairs" for i in range(12))
    return [{"id": f"{prefix}1", "text": text}, {"id": f"{prefix}2", "text": text}, {"id": f"{prefix}3", "text": "ok"}]


def run_stage(cfg: DataConfig, root: Path) -> tuple[list[str], dict]:
    ctx = local_context("data", cfg, root)
    stage.run(ctx)
    shards = sorted((ctx.output_dir / "documents").glob("*.jsonl.gz"))
    lines = [line for path in shards for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    return sorted(json.loads(line)["id"] for line in lines), json.loads((ctx.output_dir / "stats.json").read_text())


def test_filters_none_and_dedup_only_skip_the_recipe_and_only_dedup_only_dedups(tmp_path: Path):
    for name in ("raw", "edu", "web"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dup_rows(name)))
    sources = [
        {"name": "raw", "kind": "jsonl", "paths": [str(tmp_path / "raw.jsonl")], "filters": "none"},
        {"name": "edu", "kind": "jsonl", "paths": [str(tmp_path / "edu.jsonl")], "filters": "dedup-only"},
    ]
    # every filter on (the defaults): none of them runs on these sources, so nothing is fetched either
    kept, stats = run_stage(DataConfig(sources=sources, tasks=2, workers=1), tmp_path / "run")
    assert kept == ["edu1", "edu3", "raw1", "raw2", "raw3"]
    assert stats["removed"] == {"dedup.near_duplicate": 1}
    assert (stats["documents_in"], stats["documents_out"]) == (6, 5)

    # chains of different lengths in one run (no dedup): the funnel still accounts for every document
    off = {"enabled": False}
    blocks = ("url_filter", "extraction", "language", "gopher_repetition", "c4_quality", "fineweb_quality", "minhash")
    web = {"name": "web", "kind": "jsonl", "paths": [str(tmp_path / "web.jsonl")]}
    cfg = DataConfig(sources=[sources[0], web], tasks=2, workers=1, **dict.fromkeys(blocks, off))
    kept, stats = run_stage(cfg, tmp_path / "mixed")
    assert kept == ["raw1", "raw2", "raw3", "web1", "web2"]
    assert stats["removed"] == {"gopher_quality.gopher_short_doc": 1}
    assert (stats["documents_in"], stats["documents_out"]) == (6, 5)
