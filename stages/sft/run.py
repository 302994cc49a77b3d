"""The SFT stage: finetune the pretrained model on assistant conversations in the chat format.

Outputs (relative to the stage folder):
  model/        model.safetensors + config.json (load with stages.common.model.load_pretrained)
  stats.json    rows per source and skip reason with examples, the mix, losses, adherence, samples
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.lineage import DatasetRef, Tracker, upstream_model_id
from pipeline.stage import StageContext, UpstreamOutput
from stages.common import packages
from stages.common.chat import ASSISTANT_END, prompt_and_reply
from stages.common.model import GPTConfig, save_pretrained
from stages.common.model_folder import check_tokenizer
from stages.common.tasks import reply_number
from stages.common.tokenizer import Tokenizer, load
from stages.common.worker_group import WorkerGroup, launch
from stages.sft.config import SFTConfig
from stages.sft.data import Prepared, prepare
from stages.sft.train import Job, Settings, train

if TYPE_CHECKING:
    from pipeline.progress import Progress

SAMPLES = 8
REPLIES_FILE = "replies.json"


def _worker(job: Job, tracker: Tracker, progress: Progress | None, out: Path | None) -> dict[str, float]:
    """One Ray Train worker's share; rank 0 hands back the model and its sample replies in `out`."""
    model, metrics, replies = train(job, tracker.log_metrics, progress)
    if out is not None:
        save_pretrained(model, out / "model")
        (out / REPLIES_FILE).write_text(json.dumps(replies))
    return metrics


def _job(ctx: StageContext, model_dir: Path, data: Prepared, tokenizer: Tokenizer) -> Job:
    cfg: SFTConfig = ctx.config
    # Settings are the config's training fields (plain data for the workers) plus the run's seed.
    names = [f.name for f in fields(Settings) if f.name != "seed"]
    settings = Settings(**{name: getattr(cfg, name) for name in names}, seed=ctx.seed)
    return Job(
        model_dir=str(model_dir),
        train_ids=data.train.ids,
        train_mask=data.train.mask,
        heldout_ids=data.heldout.ids,
        heldout_mask=data.heldout.mask,
        prompts=data.prompts,
        prompt_tags=data.prompt_tags,
        stop_id=tokenizer.special(ASSISTANT_END),
        settings=settings,
    )


def _samples(data: Prepared, replies: list[list[int]], tokenizer: Tokenizer, world: int) -> list[dict[str, object]]:
    """Rank 0 answered prompts 0, world, 2*world, ...: show the first few with the reference reply."""
    rows = []
    for index, reply in zip(range(0, len(data.prompts), world), replies[:SAMPLES], strict=False):
        example = data.prompt_examples[index]
        prompt, reference = prompt_and_reply(example.messages)
        text = tokenizer.decode(reply)
        rows.append(
            {
                "source": example.source,
                "prompt": prompt[-1]["content"][:500],
                "reply": text[:1000],
                "reference": reference[:500],
                "correct": reply_number(text) == reply_number(reference) if example.source == "arith" else None,
            }
        )
    return rows


def _base_model(ctx: StageContext, tokenizer: Tokenizer) -> tuple[Path, UpstreamOutput]:
    """The model folder SFT starts from and where it came from (for the LoggedModel link). A model from
    elsewhere must have been trained with this run's tokenizer; it is logged as the run's base model input."""
    start = ctx.config.starting_point()  # as resolved (and fingerprinted) when the run was planned
    if start is None:
        pretrain = ctx.upstream_output("pretrain")
        return pretrain.folder / "model", pretrain
    check_tokenizer(start.folder, tokenizer)
    ctx.tracker.log_datasets([DatasetRef("base model", start.digest, str(start.folder))], context="base model")
    ctx.logger.info("sft: starting from %s", start.label)
    return start.folder, UpstreamOutput(start.label, start.folder.parent, start.run_id)


def run(ctx: StageContext) -> dict[str, float]:
    cfg: SFTConfig = ctx.config
    tokenizer = load(ctx.upstream["tokenizer"] / "tokenizer")
    model_dir, base = _base_model(ctx, tokenizer)
    model_cfg = GPTConfig.from_json((model_dir / "config.json").read_text())
    seq_len = cfg.max_seq_len or model_cfg.seq_len
    if seq_len > model_cfg.seq_len:
        raise ValueError(f"max_seq_len {seq_len} exceeds the base model's seq_len {model_cfg.seq_len}")
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"base model vocab {model_cfg.vocab_size} < tokenizer vocab {tokenizer.vocab_size}")

    data = prepare(cfg, tokenizer, seq_len, ctx.seed, packages.cache_dir(ctx.workdir), ctx.logger)
    ctx.logger.info(
        "sft: %d train rows (%.0f%% loss tokens), %d held-out rows, %d prompts",
        len(data.train),
        100 * data.train.efficiency,
        len(data.heldout),
        len(data.prompts),
    )
    ctx.tracker.log_datasets(data.datasets, context="training")

    landing = ctx.scratch_dir / "result"
    metrics = launch(
        partial(_worker, _job(ctx, model_dir, data, tokenizer), ctx.tracker, ctx.progress),
        WorkerGroup("sft", cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker),
        ctx.scratch_dir / "ray_train",
        landing,
    )
    replies = json.loads((landing / REPLIES_FILE).read_text())
    shutil.copytree(landing / "model", ctx.output_dir / "model")

    metrics |= {
        "packing_efficiency": data.train.efficiency,
        "train_rows": float(len(data.train)),
        "train_conversations": float(data.stats["train_conversations"]),
        "heldout_conversations": float(data.stats["heldout_conversations"]),
        "adherence_prompts": float(len(data.prompts)),
        "skipped_rows": float(sum(s["skipped"] for s in data.stats["sources"].values())),
    }
    samples = _samples(data, replies, tokenizer, int(metrics["world_size"]))
    stats = {"metrics": metrics, **data.stats, "samples": samples}
    (ctx.output_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    ctx.tracker.log_dict(stats, "sft/stats.json")
    ctx.tracker.log_table(
        {k: [row[k] for row in samples] for k in ("source", "prompt", "reply", "reference")}, "sft/samples.json"
    )
    ctx.tracker.log_model(
        "sft",
        ctx.output_dir / "model",
        base_model_id=upstream_model_id(ctx.tracker, base, ctx.logger),
        params={
            "config": cfg.model_dump(mode="json"),
            "seq_len": seq_len,
            "datasets": {d.name: d.digest for d in data.datasets},
        },
    )
    return metrics
