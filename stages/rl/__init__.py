"""RL stage: GRPO from verifiable rewards. Ray rollout actors sample groups of replies with the
shared KV-cache engine, a task's verifier scores them, and a Ray Train learner on pretraining's
mesh code (FSDP2 or DDP, tensor parallelism) moves the SFT policy toward what scored well.
Held-out accuracy before and after is the proof."""

from pipeline.stage import Resources, Stage
from stages.rl.config import RLConfig
from stages.rl.run import HEADLINE, run


def resources(cfg: RLConfig) -> Resources:
    # The stage task only prepares problems and coordinates; rollout actors and Ray Train learners
    # hold the CPUs/GPUs. Resources has one worker shape, so it carries the average of the two
    # kinds: the totals, which the runner checks against the cluster, are exact.
    workers = cfg.rollout_actors + cfg.learner_workers
    cpus = cfg.rollout_actors * cfg.actor_cpus + cfg.learner_workers * cfg.learner_cpus
    gpus = cfg.rollout_actors * cfg.actor_gpus + cfg.learner_workers * cfg.learner_gpus
    return Resources(cpus=cpus / workers, gpus=gpus / workers, workers=workers)


def summary(cfg: RLConfig, pipeline) -> str:
    samples = cfg.steps * cfg.prompts_per_step * cfg.group_size
    return (
        f"task {cfg.task.name} {cfg.task.options or ''}; {cfg.steps} steps x {cfg.prompts_per_step} prompts x "
        f"G={cfg.group_size} = {samples} rollouts; {cfg.rollout_actors} rollout actor(s), "
        f"{cfg.learner_workers} learner(s); {cfg.heldout_problems} held-out problems before/after"
    )


stage = Stage(
    name="rl",
    config_model=RLConfig,
    run=run,
    needs=("sft", "tokenizer"),
    resources=resources,
    headline=HEADLINE,
    description="GRPO from verifiable rewards: Ray rollout actors + a Ray Train learner",
    summary=summary,
)
