"""Local files in the exact layout of the public datasets real configs name, for offline tests.

A Hugging Face Hub dataset repository: data files (parquet or JSONL) at their repository paths and,
as on the Hub, a README whose `configs:` metadata maps each config's splits to file patterns
(`HuggingFaceFW/fineweb-edu`: `sample-10BT` -> `sample/10BT/*`). A CommonCrawl crawl:
`crawl-data/<crawl>/warc.paths.gz` naming WARC files by their path under the bucket.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from warc_support import write_responses

HTML = [("Content-Type", "text/html; charset=utf-8")]


def write_hub_repo(root: Path, files: dict[str, list[dict]], configs: dict[str, dict[str, str]] | None = None) -> Path:
    """`files`: repository path -> rows (parquet, or JSON lines, by suffix); `configs`: config ->
    {split: path pattern}, written as the README's `configs:` metadata (None: no README)."""
    for path, rows in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(rows), target)
        else:
            target.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if configs is not None:
        lines = ["---", "configs:"]
        for name, splits in configs.items():
            lines += [f"- config_name: {name}", "  data_files:"]
            lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
        (root / "README.md").write_text("\n".join([*lines, "---", f"# {root.name}", ""]))
    return root


def page(marker: str) -> bytes:
    return f"<html><head><title>{marker}</title></head><body><p>Page {marker}.</p></body></html>".encode()


def write_crawl(base: Path, crawl: str, files: int, pages_per_file: int = 2) -> list[str]:
    """WARC files of `pages_per_file` pages each (page `f<file>p<page>` at https://example.com/f<file>/p<page>)
    under `base` in CommonCrawl's layout, and the crawl's `warc.paths.gz`; returns the listed paths."""
    listed = []
    for number in range(files):
        path = f"crawl-data/{crawl}/segments/1712296815919.75/warc/{crawl}-20240412101354-{number:05d}.warc.gz"
        (base / path).parent.mkdir(parents=True, exist_ok=True)
        pages = [(f"https://example.com/f{number}/p{p}", page(f"f{number}p{p}"), HTML) for p in range(pages_per_file)]
        write_responses(base / path, pages)
        listed.append(path)
    (base / f"crawl-data/{crawl}/warc.paths.gz").write_bytes(gzip.compress("".join(p + "\n" for p in listed).encode()))
    return listed
