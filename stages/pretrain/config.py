"""The `stages.pretrain` config section: model shape, mesh, optimiser, schedule, eval, checkpoints.

Mesh problems (heads % tp, layers % pp, batch % microbatches, ...) are found by `problems()`,
which `check_against` runs when the pipeline config is validated, so an impossible mesh is
rejected with its reason before any worker starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.stage import StageConfig, cosmetic
from stages.common.model_config import GPTConfig
from stages.common.parallel.checks import DataParallel, dp_mode_problems, tp_problems

Schedule = Literal["gpipe", "1f1b", "interleaved_1f1b"]


class ModelSection(BaseModel):
    """GPT shape; the vocabulary comes from the tokenizer."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(256, ge=8)
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int | None = Field(None, ge=1, description="None: plain multi-head attention")
    d_model: int = Field(128, ge=8)
    mlp: Literal["relu2", "swiglu"] = Field(
        "swiglu", description="swiglu: exports to Hugging Face (Qwen3/Llama); relu2 does not"
    )
    mlp_ratio: float = Field(4.0, gt=0)
    qk_norm: bool = True
    rope_theta: float = Field(10_000.0, gt=0)

    def gpt(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **self.model_dump())


class PretrainConfig(StageConfig):
    model: ModelSection = Field(default_factory=ModelSection)
    # Mesh (pp, dp, tp), TP innermost. workers = dp * tp * pp.
    dp: int = Field(1, ge=1, description="data-parallel degree")
    dp_mode: DataParallel = Field(
        "fsdp", description="fsdp: FSDP2 fully_shard (shards weights and optimiser state); ddp: replicated weights"
    )
    tp: int = Field(1, ge=1, description="tensor-parallel degree (DTensor, sequence parallel)")
    pp: int = Field(1, ge=1, description="pipeline-parallel degree (torch.distributed.pipelining)")
    workers: int | None = Field(None, ge=1, description="optional cross-check: must equal dp * tp * pp")
    pp_schedule: Schedule = "1f1b"
    pp_microbatches: int = Field(2, ge=1, description="pipeline microbatches per micro-step")
    stages_per_rank: int = Field(2, ge=1, description="model chunks per pipeline rank (interleaved_1f1b only)")
    pp_layers: list[int] | None = Field(
        None, description="layers per pipeline stage, first to last (e.g. [1, 3]: lighter first stage); None: even"
    )
    loss_parallel: bool = Field(True, description="tp > 1: the loss reads vocab-sharded logits, never gathering them")
    # Batch: `micro_batch` sequences per dp rank per forward/backward, accumulated to `batch_tokens`.
    micro_batch: int = Field(8, ge=1)
    batch_tokens: int = Field(16_384, ge=1, description="tokens per optimiser step, all ranks together")
    max_steps: int = Field(200, ge=1)
    # Optimiser and schedule.
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr")
    warmup_steps: int = Field(20, ge=0)
    decay: Literal["cosine", "linear"] = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="0: no clipping")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast matmuls to bfloat16")
    compile: bool = False
    activation_checkpointing: bool = False
    # Eval and checkpoints.
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(8, ge=1, description="micro-batches per dp rank in one evaluation")
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(
        2, ge=0, description="restarts of the Ray Train group (2+ workers) from the last checkpoint"
    )
    # Resources and measurement.
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    peak_flops: float | None = Field(None, gt=0, description="per worker, for MFU; None: measure a matmul peak")
    log_every: int = cosmetic(10, "steps between metric logs", ge=1)
    progress: bool = cosmetic(True, "show a progress bar")

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def n_stages(self) -> int:
        """Pipeline stages in all: one per pp rank, or `stages_per_rank` each when interleaved."""
        return self.pp * (self.stages_per_rank if self.pp_schedule == "interleaved_1f1b" and self.pp > 1 else 1)

    def stage_layers(self) -> list[range]:
        """The global layer indices of each pipeline stage."""
        counts = self.pp_layers or [self.model.n_layer // self.n_stages] * self.n_stages
        starts = [sum(counts[:i]) for i in range(len(counts))]
        return [range(start, start + count) for start, count in zip(starts, counts, strict=True)]

    @property
    def accumulation(self) -> int:
        return self.batch_tokens // (self.micro_batch * self.model.seq_len * self.dp)

    def problems(self) -> list[str]:
        """Every reason this mesh and batch cannot run, as "field: reason"."""
        m, found = self.model, []
        heads, kv = m.n_head, m.n_kv_head or m.n_head
        if m.d_model % heads:
            found.append(f"model.n_head: {heads} does not divide d_model={m.d_model}")
        elif (m.d_model // heads) % 2:
            found.append(f"model.n_head: head_dim={m.d_model // heads} must be even for RoPE")
        if heads % kv:
            found.append(f"model.n_kv_head: {kv} does not divide n_head={heads}")
        if not found:  # the shape is valid: ask it about the mesh
            found += tp_problems(m.gpt(vocab_size=256), self.tp, m.seq_len)
        if self.pp_layers is not None:
            if self.pp == 1:
                found.append("pp_layers: set, but pp=1 (no pipeline to split)")
            elif len(self.pp_layers) != self.n_stages:
                found.append(f"pp_layers: {len(self.pp_layers)} entries for {self.n_stages} pipeline stages")
            elif min(self.pp_layers) < 1 or sum(self.pp_layers) != m.n_layer:
                found.append(f"pp_layers: {self.pp_layers} must be >= 1 each and sum to n_layer={m.n_layer}")
        elif m.n_layer % self.n_stages:
            found.append(f"pp: {self.n_stages} pipeline stages do not divide n_layer={m.n_layer} (or set pp_layers)")
        found += dp_mode_problems(self.dp_mode, self.tp, self.pp)
        if self.pp > 1 and self.micro_batch % self.pp_microbatches:
            found.append(f"pp_microbatches: {self.pp_microbatches} does not divide micro_batch={self.micro_batch}")
        if self.pp_schedule == "interleaved_1f1b" and self.pp > 1 and self.pp_microbatches % self.pp:
            found.append(f"pp_microbatches: interleaved 1F1B needs a multiple of pp={self.pp}")
        per_step = self.micro_batch * m.seq_len * self.dp
        if self.batch_tokens % per_step:
            found.append(f"batch_tokens: {self.batch_tokens} is not a multiple of micro_batch*seq_len*dp={per_step}")
        if self.workers is not None and self.workers != self.world:
            found.append(f"workers: {self.workers} != dp*tp*pp = {self.dp}*{self.tp}*{self.pp} = {self.world}")
        return found

    def check_against(self, pipeline: Any) -> None:
        found = self.problems()
        if found:
            raise ValueError(found[0] if len(found) == 1 else "; ".join(found))
