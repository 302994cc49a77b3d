"""The stage's data, end to end: every source read and rendered, split, mixed and packed into
rows, plus the held-out prompts for the adherence check and the counts for stats.json."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from pipeline.lineage import DatasetRef
from stages.common.chat import prompt_and_reply, render_prompt
from stages.common.rows import Skips, SourceError
from stages.common.tokenizer import Tokenizer
from stages.sft.config import SFTConfig
from stages.sft.conversations import Example, load_examples, source_uri
from stages.sft.mix import mix, split
from stages.sft.packing import Rows, pack


@dataclass
class Prepared:
    train: Rows
    heldout: Rows
    prompts: list[list[int]]
    prompt_tags: list[str]
    prompt_examples: list[Example]
    datasets: list[DatasetRef]  # one per source: digest = hash of its kept conversations
    stats: dict[str, Any] = field(default_factory=dict)


def _prompts(
    heldout: list[Example], tokenizer: Tokenizer, seq_len: int, cfg: SFTConfig
) -> list[tuple[list[int], Example]]:
    """Held-out prompts with room for a full reply budget whose reference reply fits that budget,
    taken from each source in turn (so every source is measured, however small its share)."""
    by_source: dict[str, list[Example]] = {}
    for example in sorted(heldout, key=lambda e: e.key):
        by_source.setdefault(example.source, []).append(example)
    chosen: list[tuple[list[int], Example]] = []
    for group in zip_longest(*by_source.values()):
        for example in group:
            if example is None or len(chosen) >= cfg.adherence_prompts:
                continue
            # A rendered conversation ends with an assistant turn, so its prompt always renders.
            prompt, reply = prompt_and_reply(example.messages)
            ids = render_prompt(tokenizer, prompt)
            # Only replies the reference itself finishes within the budget: a fair ask of the model.
            fits_budget = len(tokenizer.encode(reply)) + 1 <= cfg.max_new_tokens
            if fits_budget and len(ids) + cfg.max_new_tokens <= seq_len:
                chosen.append((ids, example))
    return chosen


def prepare(
    cfg: SFTConfig, tokenizer: Tokenizer, seq_len: int, seed: int, cache: Path, logger: logging.Logger
) -> Prepared:
    row_len = seq_len + 1
    train_by_source: dict[str, list[Example]] = {}
    heldout: list[Example] = []
    per_source: dict[str, Any] = {}
    datasets: list[DatasetRef] = []
    for source in cfg.sources:
        skips = Skips(cfg.examples_per_reason)
        examples, truncated = load_examples(source, tokenizer, row_len, cfg.truncation, seed, cache, skips)
        if not examples:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skips.counts.items())) or "no rows at all"
            raise SourceError(f"sft source {source.name!r} ({source_uri(source)}): no usable conversation ({reasons})")
        train, held = split(examples, seed, cfg.heldout_fraction)
        train_by_source[source.name], heldout = train, heldout + held
        digest = hashlib.sha256("".join(e.key for e in examples).encode()).hexdigest()[:32]
        datasets.append(DatasetRef(f"sft/{source.name}", digest, source_uri(source)))
        per_source[source.name] = {
            "kind": source.kind,
            "kept": len(examples),
            "train": len(train),
            "heldout": len(held),
            "truncated": truncated,
            "skipped": skips.total,
            **skips.as_dict(),
        }
        if skips.total:
            logger.warning(
                "sft source %s: skipped %d rows (counted, not fatal): %s", source.name, skips.total, dict(skips.counts)
            )
    mixed = mix(train_by_source, cfg.sources, seed)
    if not mixed:
        raise SourceError("no usable training conversation in any source; see the skip counts above")
    if not heldout:
        raise SourceError("no held-out conversation: raise heldout_fraction or add conversations")
    train_rows = pack([e.rendered for e in mixed], row_len, tokenizer.bos_id, cfg.packing)
    heldout_rows = pack([e.rendered for e in heldout], row_len, tokenizer.bos_id, cfg.packing)
    heldout_rows = Rows(heldout_rows.ids[: cfg.eval_rows], heldout_rows.mask[: cfg.eval_rows])
    prompts = _prompts(heldout, tokenizer, seq_len, cfg)
    if not prompts:
        raise SourceError(f"no held-out prompt leaves room for {cfg.max_new_tokens} new tokens in {seq_len}")
    stats = {
        "sources": per_source,
        "mix": {name: sum(e.source == name for e in mixed) for name in train_by_source},
        "train_conversations": len(mixed),
        "train_rows": len(train_rows),
        "heldout_conversations": len(heldout),
        "heldout_rows": len(heldout_rows),
        "packing_efficiency": train_rows.efficiency,
        "seq_len": seq_len,
    }
    return Prepared(
        train_rows,
        heldout_rows,
        [ids for ids, _ in prompts],
        [e.source for _, e in prompts],
        [e for _, e in prompts],
        datasets,
        stats,
    )
