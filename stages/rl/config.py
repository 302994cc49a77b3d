"""The `stages.rl` config section: the task, the rollouts, the GRPO objective and the workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.stage import StageConfig, cosmetic


class TaskConfig(BaseModel):
    """A task from the registry in stages.common.tasks (arith, gsm8k, asdiv, countdown) and its
    options (the task's keyword arguments, e.g. `{max_steps: 2, max_number: 10}` for arith)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "arith"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _buildable(self) -> TaskConfig:
        from stages.common import tasks

        tasks.get(self.name, **self.options)  # unknown tasks and options are reported up front
        return self


class RLConfig(StageConfig):
    task: TaskConfig = Field(default_factory=TaskConfig)
    # rollouts
    steps: int = Field(20, ge=1, description="GRPO steps: one rollout batch and its updates each")
    prompts_per_step: int = Field(32, ge=1, description="problems per step")
    group_size: int = Field(8, ge=2, description="G: samples per problem, the group advantages are taken over")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int = Field(
        64, ge=1, description="reply budget; replies cut off here end without <|assistant_end|>"
    )
    reward_timeout_s: float = Field(1.0, gt=0, description="a reward call running longer scores 0 and is counted")
    # objective
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0: no clipping")
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    minibatches: int = Field(1, ge=1, description="optimizer steps per pass")
    micro_batch: int = Field(64, ge=1, description="sequences per forward/backward on each learner")
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO clip below: ratio >= 1 - clip_low")
    clip_high: float = Field(0.28, ge=0, description="PPO clip above (DAPO clip-higher): ratio <= 1 + clip_high")
    kl_coef: float = Field(0.0, ge=0, description="weight of the KL to the frozen SFT model (0: off, as in TRL)")
    normalize_std: bool = Field(True, description="divide advantages by the group's std (False: Dr.GRPO)")
    aggregation: Literal["token", "sequence", "constant"] = Field(
        "token", description="token: mean over all tokens (DAPO); sequence: per reply (GRPO); constant: Dr.GRPO"
    )
    dynamic_sampling: bool = Field(
        True,
        description="drop groups whose rewards are all equal (zero advantage) before learning, counted; the loss "
        "still averages over the whole batch, so a step with few informative groups moves the policy less",
    )
    kl_metric: bool = Field(True, description="log KL(policy || SFT model) each step (one more forward per step)")
    bf16: bool = False
    # held-out measurement
    heldout_problems: int = Field(500, ge=1, description="answered greedily before and after RL: the proof")
    eval_every: int = Field(10, ge=1, description="pass@1 and pass@k on the monitor problems every N steps")
    monitor_problems: int = Field(64, ge=1, description="held-out problems for the periodic pass@k check")
    pass_k: int = Field(8, ge=0, le=64, description="k of pass@k (samples per monitor problem); 0: greedy only")
    # workers
    rollout_actors: int = Field(1, ge=1, description="Ray actors that hold the policy and sample")
    actor_cpus: float = Field(1.0, gt=0)
    actor_gpus: float = Field(
        0.0, ge=0, description="fractions share a learner's GPU (e.g. 0.25 with learner_gpus 0.75)"
    )
    learner_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks through accelerate)")
    learner_cpus: float = Field(1.0, gt=0)
    learner_gpus: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per actor and learner; rollouts and learning alternate, so on CPU "
        "each phase may use every core (None: Ray's default of one thread per CPU asked)",
    )
    generation_batch: int = Field(256, ge=1, description="sequences per generation batch on an actor")
    log_every: int = cosmetic(1, "step metrics to MLflow every N steps", ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        if self.monitor_problems > self.heldout_problems:
            raise ValueError(f"monitor_problems {self.monitor_problems} > heldout_problems {self.heldout_problems}")
        return self
