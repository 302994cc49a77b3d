"""What a model and a mesh must satisfy, as "field: reason" lines for a stage config's `problems`,
so an impossible layout is refused when the pipeline config is validated, before any worker starts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from stages.common.model_config import GPTConfig

DataParallel = Literal["fsdp", "ddp"]  # fsdp: FSDP2 shards weights, grads, optimiser state; ddp: replicas


def finetune_dp_mode() -> Any:
    """The `dp_mode` setting of a stage that trains on the mesh without a pipeline (SFT, the RL learner)."""
    return Field(
        "ddp",
        description="ddp: replicated weights (2 CPU workers, tiny shape: 11% less time a step than fsdp); fsdp: FSDP2 "
        "shards weights, grads and optimiser state over dp (needed with tp, and for models one worker cannot hold)",
    )


def finetune_pp() -> Any:
    """The `pp` setting of such a stage: present so a copied pretrain mesh is refused by name, not as unknown."""
    return Field(1, ge=1, description="pipeline parallelism is pretraining's alone: must stay 1")


def tp_problems(model: GPTConfig, tp: int, seq_len: int) -> list[str]:
    """Tensor parallelism splits heads, KV heads and the MLP width, and sequence parallelism the
    `seq_len` tokens of a row."""
    found = []
    if model.n_head % tp:
        found.append(f"tp: {tp} does not divide n_head={model.n_head}")
    if model.kv_heads % tp:
        found.append(f"tp: {tp} does not divide n_kv_head={model.kv_heads}")
    if model.hidden_dim % tp:
        found.append(f"tp: {tp} does not divide the MLP width {model.hidden_dim}")
    if seq_len % tp:
        found.append(f"tp: {tp} does not divide seq_len={seq_len} (sequence parallel)")
    return found


def dp_mode_problems(dp_mode: str, tp: int, pp: int) -> list[str]:
    if dp_mode == "ddp" and (tp > 1 or pp > 1):
        return ["dp_mode: ddp replicates whole models and composes with neither tp nor pp; use fsdp"]
    return []


def no_pipeline(stage: str, pp: int) -> list[str]:
    """SFT and the RL learner lay out whole models: pipeline parallelism is pretraining's alone."""
    if pp > 1:
        return [f"pp: {pp}, but {stage} has no pipeline parallelism (pretrain only); fit the model with tp and fsdp"]
    return []


def workers_problems(field: str, workers: int, tp: int) -> list[str]:
    """A dp x tp mesh: the workers form whole tensor-parallel groups."""
    if workers % tp:
        return [f"{field}: {workers} workers do not form whole tensor-parallel groups of tp={tp} (workers = dp * tp)"]
    return []


def pipeline_model(pipeline: object) -> GPTConfig | None:
    """The shape of the model this pipeline's pretrain stage makes, which SFT and RL then tune
    (None: no pretrain stage, or a shape that stage refuses itself). The vocabulary does not
    matter to the checks here."""
    stages = getattr(pipeline, "stages", {})
    section = getattr(stages.get("pretrain"), "model", None)
    if section is None:
        return None
    try:
        return section.gpt(vocab_size=256)
    except ValueError:
        return None
