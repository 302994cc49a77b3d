"""stats.json, removed-document samples, MLflow metrics and the funnel table, from merged tallies; and the
report card's funnel section, from stats.json."""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.report_blocks import Block, Table, Text, fmt, fmt_bytes, pct
from pipeline.stage import StageReport
from stages.data.funnel import Tally, merge
from stages.data.readers import BLOCK

KEPT = "kept"


def _kept(parts: list[dict[str, Any]]) -> tuple[int, int]:
    """Documents and bytes that left the last block of their task's chain. Chains differ by source (a
    source filtered before skips the filters; one with `filters: none` skips dedup), so this is summed
    per task, not read off one block. A part that does not begin with reading (the dedup phase) takes in
    what a filter part let out: that is counted once, where the chain ends."""
    docs = size = 0
    for part in parts:
        if not part["blocks"]:
            continue
        first, last = part["blocks"][0], part["blocks"][-1]
        docs += part["docs"].get(f"{last}.out", 0)
        size += part["bytes"].get(f"{last}.out", 0)
        if first != BLOCK:
            docs -= part["docs"].get(f"{first}.in", 0)
            size -= part["bytes"].get(f"{first}.in", 0)
    return docs, size


def build_stats(parts: list[dict[str, Any]], clusters: dict[str, Any], shards: int) -> dict[str, Any]:
    total = merge(parts)
    docs, size, removed = total["docs"], total["bytes"], total["removed"]
    blocks = [
        {
            "block": name,
            "docs_in": docs[f"{name}.in"],
            "docs_out": docs[f"{name}.out"],
            "bytes_in": size[f"{name}.in"],
            "bytes_out": size[f"{name}.out"],
            "removed": {k.partition(".")[2]: v for k, v in sorted(removed.items()) if k.startswith(f"{name}.")},
        }
        for name in total["blocks"]
    ]
    documents_in = docs[f"{BLOCK}.in"]
    documents_out, bytes_out = _kept(parts)
    stats = {
        "documents_in": documents_in,
        "documents_out": documents_out,
        "bytes_in": size[f"{BLOCK}.in"],
        "bytes_out": bytes_out,
        "removed": dict(sorted(removed.items())),
        "blocks": blocks,
        "events": dict(sorted(total["events"].items())),
        "languages": dict(total["languages"].most_common()),
        "dedup": clusters,
        "shards": shards,
    }
    lost = documents_in - documents_out - sum(removed.values())
    if lost:  # every document must be kept or removed for a named reason
        raise RuntimeError(f"accounting broken: {lost} documents neither kept nor removed; blocks: {blocks}")
    return stats


def metrics(stats: dict[str, Any]) -> dict[str, float]:
    flat = {key: float(stats[key]) for key in ("documents_in", "documents_out", "bytes_in", "bytes_out")}
    for block in stats["blocks"]:
        flat[f"removed_{block['block']}"] = float(block["docs_in"] - block["docs_out"])
        for reason, count in block["removed"].items():
            flat[f"removed_{block['block']}_{reason}"] = float(count)
    for key in ("clusters", "documents_in_clusters", "largest_cluster"):
        if key in stats["dedup"]:
            flat[f"dedup_{key}"] = float(stats["dedup"][key])
    return flat


def funnel_table(stats: dict[str, Any]) -> dict[str, list]:
    rows = stats["blocks"]
    return {
        "block": [r["block"] for r in rows],
        "docs_in": [r["docs_in"] for r in rows],
        "docs_out": [r["docs_out"] for r in rows],
        "bytes_in": [r["bytes_in"] for r in rows],
        "bytes_out": [r["bytes_out"] for r in rows],
        "kept_fraction": [round(r["docs_out"] / r["docs_in"], 4) if r["docs_in"] else 1.0 for r in rows],
    }


def write_removed(parts: list[dict[str, Any]], cap: int, folder: Path) -> list[str]:
    """First `cap` removed documents per reason, in task order, as removed/<block>.<reason>.jsonl.gz."""
    by_reason: dict[str, list[dict]] = {}
    for part in parts:
        for reason, samples in part.get("samples", {}).items():
            by_reason.setdefault(reason, []).extend(samples)
    folder.mkdir(parents=True, exist_ok=True)
    for reason, samples in sorted(by_reason.items()):
        with gzip.open(folder / f"{reason}.jsonl.gz", "wt", encoding="utf-8") as handle:
            for sample in samples[:cap]:
                handle.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")
    return sorted(by_reason)


def unreadable_part(problems: list, cap: int) -> dict[str, Any]:
    """Paths that could not be listed or opened count as one removed input each, never silently."""
    tally = Tally(sample_cap=cap)
    tally.block(BLOCK)
    for problem in problems:
        tally.fail_file(BLOCK, "unreadable_path", problem.path, problem.error)
    return {"tally": tally.to_dict(), "samples": tally.samples}


def _removed(reasons: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])) or "–"


def funnel_section(folder: Path, _metrics: Mapping[str, float]) -> list[Block]:
    """Documents and bytes through each filter, in the order they flow, with removals per reason."""
    stats = json.loads((folder / "stats.json").read_text())
    blocks = stats["blocks"]
    rows = [
        [
            b["block"],
            fmt(b["docs_in"]),
            fmt(b["docs_out"]),
            pct(b["docs_out"], b["docs_in"]),
            fmt_bytes(b["bytes_in"]),
            fmt_bytes(b["bytes_out"]),
            pct(b["bytes_out"], b["bytes_in"]),
            _removed(b.get("removed", {})),
        ]
        for b in blocks
    ]
    docs_in, docs_out = stats["documents_in"], stats["documents_out"]
    bytes_in, bytes_out = stats["bytes_in"], stats["bytes_out"]
    section: list[Block] = [
        Text(
            f"{docs_in:,} documents in, {docs_out:,} kept ({pct(docs_out, docs_in)}); "
            f"{fmt_bytes(bytes_in)} in, {fmt_bytes(bytes_out)} out ({pct(bytes_out, bytes_in)} of the bytes). "
            "Each row is one filter in the order documents flow through; removals are per named reason."
        ),
        Table(["filter", "docs in", "docs out", "kept", "bytes in", "bytes out", "bytes kept", "removed"], rows),
    ]
    dedup = {k: v for k, v in (stats.get("dedup") or {}).items() if isinstance(v, int | float)}
    if dedup:
        section.append(Text("Deduplication: " + ", ".join(f"{k} {fmt(v)}" for k, v in dedup.items()) + "."))
    return section


SECTION = StageReport("Data funnel", funnel_section)
