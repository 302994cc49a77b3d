"""RL stage: GRPO from verifiable rewards. Ray rollout actors sample groups of replies with the
shared KV-cache engine, a task's verifier scores them, and a Ray Train learner on pretraining's
mesh code (FSDP2 or DDP, tensor parallelism) moves the SFT policy toward what scored well.
Held-out accuracy before and after is the proof."""

from collections.abc import Mapping
from typing import Any

from pipeline.budget import GB, Budget
from pipeline.stage import Resources, Stage, deferred
from stages.common import budget as estimate
from stages.common.model_config import GPTConfig
from stages.rl.config import RLConfig

HEADLINE = ("accuracy_before", "accuracy_after", "accuracy_gain", "accuracy_gain_se", "skill_gain", "heldout_problems")


def resources(cfg: RLConfig) -> Resources:
    # The stage task only prepares problems and coordinates; rollout actors and Ray Train learners
    # hold the CPUs/GPUs. Resources has one worker shape, so it carries the average of the two
    # kinds: the totals, which the runner checks against the cluster, are exact.
    workers = cfg.rollout_actors + cfg.learner_workers
    cpus = cfg.rollout_actors * cfg.actor_cpus + cfg.learner_workers * cfg.learner_cpus
    gpus = cfg.rollout_actors * cfg.actor_gpus + cfg.learner_workers * cfg.learner_gpus
    return Resources(cpus=cpus / workers, gpus=gpus / workers, workers=workers)


def _memory(cfg: RLConfig, gpt: GPTConfig, on_gpu: bool) -> tuple[estimate.Memory, float]:
    """The tightest worker's memory and the GPUs it must fit in: a learner (training state, activations of
    `micro_batch` replies, the frozen reference when KL is measured) and a rollout actor (weights and the KV
    cache of `generation_batch` sequences), summed when they share a GPU."""
    context = estimate.TASK_PROMPT_TOKENS + cfg.max_new_tokens
    shards = cfg.learner_workers if cfg.dp_mode == "fsdp" else cfg.tp
    learner = estimate.training_memory(
        gpt, micro_tokens=cfg.micro_batch * context, shards=shards, tp=cfg.tp, bf16=cfg.bf16, on_gpu=on_gpu
    )
    if cfg.kl_coef > 0 or cfg.kl_metric:
        reference = 4 * gpt.num_params() / shards / GB
        learner = estimate.Memory(learner.gb + reference, f"{learner.parts} + reference {reference:.1f} GB")
    actor = estimate.inference_memory(
        gpt, batch=cfg.generation_batch, context=context, bf16=cfg.bf16, score=False, on_gpu=on_gpu
    )
    if cfg.actor_placement == "shared":
        both = estimate.Memory(learner.gb + actor.gb, f"learner: {learner.parts}; actor: {actor.parts}")
        return both, 1.0
    learner_share = learner.gb / max(cfg.learner_gpus, 1e-9)
    actor_share = actor.gb / max(cfg.actor_gpus, 1e-9)
    if learner_share >= actor_share:
        return estimate.Memory(learner.gb, "learner: " + learner.parts), cfg.learner_gpus
    return estimate.Memory(actor.gb, "actor: " + actor.parts), cfg.actor_gpus


def budget(cfg: RLConfig, pipeline: Any, upstream: Mapping[str, Budget]) -> Budget:
    """Rollouts (sampled tokens), learner passes (`ppo_epochs` over every reply, plus the no-grad passes),
    the held-out and pass@k replies, and the memory of learners and actors; replies are counted at their
    full `max_new_tokens`, prompts at a GSM8K question's length."""
    samples = cfg.steps * cfg.prompts_per_step * cfg.group_size
    details = (
        f"task {cfg.task.name} {cfg.task.options or ''}; {cfg.steps} steps x {cfg.prompts_per_step} prompts x "
        f"G={cfg.group_size} = {samples} rollouts; {cfg.rollout_actors} rollout actor(s), "
        f"{cfg.learner_workers} learner(s) ({cfg.actor_placement} GPUs); {cfg.heldout_problems} held-out problems"
    )
    gpt = estimate.upstream_model(upstream, "sft")
    if gpt is None:
        return Budget(details=details)
    context = estimate.TASK_PROMPT_TOKENS + cfg.max_new_tokens
    sampled = samples * cfg.max_new_tokens
    checks = 2 * cfg.heldout_problems + cfg.steps // cfg.eval_every * cfg.monitor_problems * max(cfg.pass_k, 1)
    no_grad_passes = 1 + (cfg.kl_coef > 0 or cfg.kl_metric)
    learn = gpt.flops_per_token() * samples * context * cfg.ppo_epochs
    learn += estimate.forward_flops(gpt, samples * context * no_grad_passes)
    generate = estimate.forward_flops(gpt, sampled + checks * cfg.max_new_tokens)
    on_gpu = cfg.learner_gpus > 0
    memory, holds = _memory(cfg, gpt, on_gpu)
    hardware = pipeline.cluster.hardware
    seconds = None
    if hardware is not None and on_gpu and cfg.actor_gpus > 0:  # rollouts and learning alternate
        decode = estimate.decode_seconds(
            gpt,
            hardware,
            sequences=samples + checks,
            new_tokens=cfg.max_new_tokens,
            batch=cfg.generation_batch,
            gpus=cfg.rollout_actors,
        )
        seconds = hardware.gpu_seconds(learn, cfg.learner_workers * cfg.learner_gpus) + decode
    return Budget(
        details=details,
        tokens=sampled + samples * context * cfg.ppo_epochs,
        steps=cfg.steps * cfg.ppo_epochs * cfg.minibatches,
        flops=learn + generate,
        memory_gb=memory.gb,
        memory_parts=memory.parts,
        on_gpu=on_gpu,
        holds_gpus=holds,
        seconds=seconds,
        output={"model": gpt},
    )


stage = Stage(
    name="rl",
    config_model=RLConfig,
    run=deferred("stages.rl.run:run"),
    needs=("sft", "tokenizer"),
    resources=resources,
    headline=HEADLINE,
    description="GRPO from verifiable rewards: Ray rollout actors + a Ray Train learner",
    budget=budget,
)
