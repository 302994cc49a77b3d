"""Small real stages that exercise the core until (and beside) the real ones: they read
upstream outputs, write files, log metrics and a LoggedModel, and can be made to fail."""

from __future__ import annotations

import json
import random
import time

from pydantic import Field

from pipeline.stage import Resources, Stage, StageConfig, StageContext, cosmetic


class WordsConfig(StageConfig):
    count: int = Field(200, ge=1)
    log_every: int = cosmetic(50)


class CountConfig(StageConfig):
    top: int = Field(5, ge=1)
    fail: bool = False
    sleep: float = Field(0.0, ge=0)


class ModelConfig(StageConfig):
    dim: int = Field(4, ge=1)
    heads: int = Field(2, ge=1)

    def check_against(self, pipeline) -> None:
        if self.dim % self.heads:
            raise ValueError(f"heads: {self.heads} does not divide dim={self.dim}")


def make_words(ctx: StageContext) -> dict[str, float]:
    rng = random.Random(ctx.seed)
    words = ["".join(rng.choice("abcde") for _ in range(rng.randint(1, 4))) for _ in range(ctx.config.count)]
    (ctx.output_dir / "words.txt").write_text("\n".join(words))
    ctx.logger.info("wrote %d words", len(words))
    for step in range(0, ctx.config.count, ctx.config.log_every):
        ctx.tracker.log_metrics({"progress": step / ctx.config.count}, step=step)
    return {"words": len(words)}


def count_words(ctx: StageContext) -> dict[str, float]:
    words = (ctx.upstream["words"] / "words.txt").read_text().split()
    counts: dict[str, int] = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    time.sleep(ctx.config.sleep)
    if ctx.config.fail:
        (ctx.output_dir / "partial.json").write_text("{}")
        raise RuntimeError("count stage asked to fail")
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: ctx.config.top]
    (ctx.output_dir / "counts.json").write_text(json.dumps(dict(top)))
    return {"distinct": len(counts)}


def fit_model(ctx: StageContext) -> dict[str, float]:
    counts = json.loads((ctx.upstream["count"] / "counts.json").read_text())
    weights = {word: n / sum(counts.values()) for word, n in counts.items()}
    checkpoint = ctx.output_dir / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "weights.json").write_text(json.dumps(weights))
    ctx.tracker.log_model("toy-model", checkpoint, params={"dim": ctx.config.dim})
    return {"params": len(weights)}


words = Stage("words", WordsConfig, make_words, resources=lambda cfg: Resources(cpus=1))
count = Stage("count", CountConfig, count_words, needs=("words",))
model = Stage("model", ModelConfig, fit_model, needs=("count",))
ALL = (words, count, model)
