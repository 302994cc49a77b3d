"""The `stages.rl` config section: the task, the rollouts, the GRPO objective and the workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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

Placement = Literal["own", "shared"]


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
    temperature: float = Field(
        1.0, gt=0, description="rollout sampling temperature; the learner takes its log-probs at the same one"
    )
    top_k: int | None = Field(None, ge=1, description="rollout truncation, unseen by the learner's log-probs")
    top_p: float | None = Field(None, gt=0, le=1, description="rollout truncation, unseen by the learner's log-probs")
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
    # The learner: a Ray Train group on the mesh code pretraining uses (stages.common.parallel,
    # without its pipeline); learner_workers = dp * tp.
    learner_workers: int = Field(1, ge=1, description="Ray Train workers of the learner: dp * tp")
    learner_cpus: float = Field(1.0, gt=0)
    learner_gpus: float = Field(0.0, ge=0, description="per learner worker; see actor_placement")
    tp: int = Field(1, ge=1, description="learner tensor-parallel degree (DTensor, sequence parallel)")
    dp_mode: DataParallel = finetune_dp_mode()
    pp: int = finetune_pp()
    # The rollout actors and where they sit (see `placement_problems`).
    rollout_actors: int = Field(1, ge=1, description="Ray actors that hold the policy and sample")
    actor_cpus: float = Field(1.0, gt=0)
    actor_gpus: float = Field(0.0, ge=0, description="per rollout actor (0: it samples on CPU); see actor_placement")
    actor_placement: Placement = Field(
        "own",
        description="own: actors on GPUs of their own, never a learner's; shared: each learner's GPU also "
        "holds one actor (actor_gpus + learner_gpus = 1, actor_gpus > 0.5, rollout_actors = learner_workers)",
    )
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

    def placement_problems(self) -> list[str]:
        """Where Ray puts the actors. GPU shares are Ray's bookkeeping, not memory limits: a GPU
        is split by the fractions asked of it. The actors start first, and Ray packs fractional
        requests onto as few GPUs as it can; so

        own     learners hold whole GPUs (learner_gpus 0 or a whole number), leaving no room on
                them for an actor; actors take `actor_gpus` each elsewhere (a fraction lets
                several actors share a GPU among themselves).
        shared  every learner GPU also holds one actor: one GPU is actor_gpus + learner_gpus = 1,
                and actor_gpus > 0.5 keeps Ray from packing two actors onto one GPU (which would
                leave a learner without room), so each learner fills the room one actor left.
        """
        actors, learners = self.actor_gpus, self.learner_gpus
        if self.actor_placement == "own":
            if learners != int(learners):
                return [
                    f"learner_gpus: {learners:g} is a fraction, so Ray may place rollout actors on the learners' "
                    "GPUs; give learners whole GPUs, or set actor_placement: shared"
                ]
            return []
        found = []
        if not learners or not actors:
            found.append("actor_placement: shared puts actors on the learners' GPUs; set learner_gpus and actor_gpus")
        elif abs(actors + learners - 1) > 1e-9 or actors <= 0.5:
            found.append(
                f"actor_gpus: shared GPUs need actor_gpus + learner_gpus = 1 with actor_gpus > 0.5 (one actor per "
                f"GPU), got {actors:g} + {learners:g}"
            )
        if self.rollout_actors != self.learner_workers:
            found.append(
                f"rollout_actors: {self.rollout_actors} != learner_workers={self.learner_workers}; "
                "actor_placement: shared puts one actor on each learner's GPU"
            )
        return found

    def problems(self, model: GPTConfig | None) -> list[str]:
        """Every reason the learner's mesh or the placement cannot work, as "field: reason"; the
        model's shape when known (its full seq_len, since rows are padded for sequence parallelism)."""
        found = no_pipeline("rl", self.pp) + workers_problems("learner_workers", self.learner_workers, self.tp)
        found += dp_mode_problems(self.dp_mode, self.tp, self.pp) + self.placement_problems()
        if model is not None:
            found += tp_problems(model, self.tp, model.seq_len)
        return found

    def check_against(self, pipeline: Any) -> None:
        found = self.problems(pipeline_model(pipeline))
        if found:
            raise ValueError("; ".join(found))
