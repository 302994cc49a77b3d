"""The `stages.eval` config section: which models, which evaluations, how many items each."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.stage import StageConfig, cosmetic

MODEL_STAGES = ("pretrain", "sft", "rl")  # evaluated in this order, whichever exist upstream
CHOICE_SETS = ("mmlu", "commonsenseqa", "piqa", "openbookqa", "boolq")


class TaskSpec(BaseModel):
    """A generative task from the registry in stages.common.tasks: how many held-out problems and
    the task's options (as the RL stage takes them, e.g. `{max_steps: 2}` for arith). In YAML a
    bare number means `{count: N}`."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(100, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class EvalConfig(StageConfig):
    models: list[Literal["pretrain", "sft", "rl"]] = Field(
        default_factory=lambda: list(MODEL_STAGES),
        min_length=1,
        description="model stages to evaluate; those missing from the upstream outputs are skipped",
    )
    # -- base-model measures (every model gets them) ---------------------------------------
    bpb_windows: int = Field(64, ge=1, description="held-out windows of seq_len tokens scored for bits per byte")
    samples: int = Field(4, ge=0, description="held-out document openings completed by sampling")
    sample_prompt_tokens: int = Field(16, ge=1, description="tokens of each held-out opening given as the prompt")
    sample_tokens: int = Field(48, ge=1, description="tokens sampled per completion")
    sample_temperature: float = Field(0.8, ge=0)
    sample_top_k: int | None = Field(40, ge=1)
    # -- chat-model measures -----------------------------------------------------------------
    tasks: dict[str, TaskSpec] = Field(
        default_factory=lambda: {"arith": TaskSpec(), "asdiv": TaskSpec()},
        description="generative task -> held-out problems answered greedily (chat models), scored by its reward",
    )
    max_new_tokens: int = Field(128, ge=1, description="reply budget for task answers and adherence prompts")
    adherence_prompts: int = Field(
        32, ge=0, description="held-out open questions (from the choice sets) answered to check the chat format"
    )
    # -- multiple choice (every model: plain text for the base model, the chat template otherwise) ----
    choice: dict[str, int] = Field(
        default_factory=lambda: dict.fromkeys(CHOICE_SETS, 100),
        description="multiple-choice set -> items scored by option log-likelihood",
    )
    normalize: Literal["bytes", "none"] = Field(
        "bytes", description="choice score: log-likelihood per byte of the option (bytes) or summed (none)"
    )
    # -- execution -----------------------------------------------------------------------------
    unit_size: int = Field(
        16, ge=1, description="examples per work unit; results are the same for any number of workers"
    )
    workers: int = cosmetic(2, "parallel Ray tasks per model (data-parallel over work units)", ge=1)
    cpus_per_worker: float = cosmetic(1.0, "CPUs each eval task holds", gt=0)
    gpus_per_worker: float = cosmetic(0.0, "GPUs each eval task holds (the model runs on its GPU)", ge=0)
    batch_size: int = cosmetic(32, "sequences per forward pass inside a work unit", ge=1)

    @field_validator("choice")
    @classmethod
    def _known_sets(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(CHOICE_SETS))
        if unknown:
            raise ValueError(f"unknown choice set(s) {unknown}; known: {list(CHOICE_SETS)}")
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"item counts must be >= 1, got {bad}")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _counts(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"count": v} if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
        return value

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
        from stages.common import tasks

        for name, spec in value.items():
            tasks.get(name, **spec.options)  # unknown tasks and options are reported up front
        return value
