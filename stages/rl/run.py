"""The RL stage: GRPO on the SFT model with a task's verifiable reward.

Outputs (relative to the stage folder):
  model/          the policy: model.safetensors + config.json (stages.common.model.load_pretrained)
  stats.json      metrics, the task and its skips, reward-call counts, per-step history, samples
  heldout.jsonl   every held-out problem with its greedy correctness before and after RL
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.lineage import DatasetRef, Tracker, upstream_model_id
from pipeline.stage import StageContext
from stages.common import packages, tasks
from stages.common.chat import ASSISTANT_END, render_prompt
from stages.common.generate import Sampling
from stages.common.model import GPTConfig, save_pretrained
from stages.common.tasks import Problem, Skips, Task
from stages.common.tokenizer import Tokenizer, load
from stages.common.worker_group import WorkerGroup, launch
from stages.rl import HEADLINE
from stages.rl.config import RLConfig
from stages.rl.learner import Job, Result, Settings, train
from stages.rl.rollout import ActorPool, Item, Sampler, SamplerSpec

if TYPE_CHECKING:
    from pipeline.progress import Progress

RESULT_FILE = "result.json"


def _learner(job: Job, tracker: Tracker, progress: Progress | None, out: Path | None) -> dict[str, float]:
    """One Ray Train worker's share of the learner. The rollout actors travel inside the job as
    handles; only rank 0 talks to them, and hands back the policy and the results in `out`."""
    model, result = train(job, tracker.log_metrics, progress)
    if out is not None:
        save_pretrained(model, out / "model")
        (out / RESULT_FILE).write_text(json.dumps(asdict(result)))
    return result.metrics


def make_task(cfg: RLConfig, workdir: Path) -> Task:
    return tasks.get(cfg.task.name, **({"cache_dir": str(packages.cache_dir(workdir))} | cfg.task.options))


def render(
    problems: list[Problem], tokenizer: Tokenizer, seq_len: int, max_new_tokens: int, skips: Skips
) -> list[Item]:
    """Problems whose prompt leaves room for a full reply; the rest are counted and skipped."""
    items = []
    for problem in problems:
        ids = render_prompt(tokenizer, problem.messages())
        if len(ids) + max_new_tokens > seq_len:
            skips.add("prompt_too_long", problem.id, f"{len(ids)} + {max_new_tokens} new tokens > {seq_len}")
            continue
        items.append(Item(problem, ids))
    return items


def prepare(
    cfg: RLConfig, task: Task, tokenizer: Tokenizer, seq_len: int, seed: int
) -> tuple[list[Item], list[Item], Skips]:
    skips = Skips()
    heldout = render(
        task.problems("heldout", cfg.heldout_problems, seed), tokenizer, seq_len, cfg.max_new_tokens, skips
    )
    seen = {item.problem.prompt for item in heldout}
    wanted = cfg.steps * cfg.prompts_per_step
    train = []
    for problem in task.problems("train", wanted, seed):
        if problem.prompt in seen:  # generated splits can meet by chance: never train on a test question
            skips.add("train_equals_heldout", problem.id, problem.prompt[:80])
        else:
            train.append(problem)
    train_items = render(train, tokenizer, seq_len, cfg.max_new_tokens, skips)
    if not train_items:
        raise ValueError(f"task {cfg.task.name}: no usable training problem ({task.skips.as_dict()['counts']})")
    if not heldout:
        raise ValueError(f"task {cfg.task.name}: no usable held-out problem ({task.skips.as_dict()['counts']})")
    return train_items, heldout, skips


def settings(cfg: RLConfig, seed: int) -> Settings:
    names = {f.name for f in fields(Settings)} - {"seed", "threads", "eval_every"}
    return Settings(
        **{name: getattr(cfg, name) for name in names}, eval_every=cfg.eval_every, threads=cfg.torch_threads, seed=seed
    )


def start_actors(cfg: RLConfig, spec: SamplerSpec) -> list[Any]:
    import ray

    actor = ray.remote(Sampler).options(num_cpus=cfg.actor_cpus, num_gpus=cfg.actor_gpus)
    actors = [actor.remote(spec) for _ in range(cfg.rollout_actors)]
    ray.get([a.ping.remote() for a in actors])  # fail here, with the actor's error, if one cannot start
    return actors


def run(ctx: StageContext) -> dict[str, float]:
    import ray

    cfg: RLConfig = ctx.config
    tokenizer_dir = ctx.upstream["tokenizer"] / "tokenizer"
    model_dir = ctx.upstream["sft"] / "model"
    tokenizer = load(tokenizer_dir)
    model_cfg = GPTConfig.from_json((model_dir / "config.json").read_text())
    task = make_task(cfg, ctx.workdir)
    train_items, heldout, skips = prepare(cfg, task, tokenizer, model_cfg.seq_len, ctx.seed)
    ctx.logger.info(
        "rl: task %s %s: %d training problems, %d held-out; skipped %s",
        cfg.task.name,
        task.options(),
        len(train_items),
        len(heldout),
        dict(task.skips.counts + skips.counts),
    )
    train_problems = [i.problem for i in train_items]
    heldout_problems = [i.problem for i in heldout]
    datasets = [
        DatasetRef(f"rl/{cfg.task.name}/train", tasks.digest(train_problems), task.source()),
        DatasetRef(f"rl/{cfg.task.name}/heldout", tasks.digest(heldout_problems), task.source()),
    ]
    ctx.tracker.log_datasets(datasets[:1], context="training")
    ctx.tracker.log_datasets(datasets[1:], context="evaluation")

    stop_id = tokenizer.special(ASSISTANT_END)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    spec = SamplerSpec(
        str(model_dir),
        str(tokenizer_dir),
        task,
        stop_id,
        sampling,
        cfg.reward_timeout_s,
        cfg.generation_batch,
        cfg.torch_threads,
        device="cuda" if cfg.actor_gpus else "cpu",  # an actor without a GPU share never touches one
    )
    actors = start_actors(cfg, spec)
    try:
        job = Job(
            model_dir=str(model_dir),
            train=train_items,
            monitor=heldout[: cfg.monitor_problems],
            heldout=heldout,
            stop_id=stop_id,
            settings=settings(cfg, ctx.seed),
            pool=ActorPool(actors),
            pad_id=stop_id,
        )
        landing = ctx.scratch_dir / "result"
        launch(
            partial(_learner, job, ctx.tracker, ctx.progress),
            WorkerGroup("rl", cfg.learner_workers, cfg.learner_cpus, cfg.learner_gpus),
            ctx.scratch_dir / "ray_train",
            landing,
        )
    finally:
        for actor in actors:
            ray.kill(actor)
    result = Result(**json.loads((landing / RESULT_FILE).read_text()))
    shutil.copytree(landing / "model", ctx.output_dir / "model")

    metrics = dict(result.metrics)
    metrics |= {
        "train_problems": float(len(train_items)),
        "skipped_problems": float(task.skips.total + skips.total),
    }
    ctx.tracker.log_metrics({k: metrics[k] for k in HEADLINE if k in metrics}, cfg.steps)
    with (ctx.output_dir / "heldout.jsonl").open("w") as out:
        for problem, before, after in zip(heldout_problems, result.before, result.after, strict=True):
            out.write(json.dumps({"id": problem.id, "answer": problem.answer, "before": before, "after": after}) + "\n")
    stats = {
        "metrics": metrics,
        "task": {"name": cfg.task.name, "options": task.options(), "source": task.source()},
        "datasets": {d.name: d.digest for d in datasets},
        "skips": {"rows": task.skips.as_dict(), "problems": skips.as_dict()},
        "history": result.history,
        "samples": result.samples,
    }
    (ctx.output_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    ctx.tracker.log_dict(stats, "rl/stats.json")
    if result.samples:
        ctx.tracker.log_table(
            {k: [row[k] for row in result.samples] for k in ("prompt", "answer", "before", "after")}, "rl/samples.json"
        )
    ctx.tracker.log_model(
        "rl",
        ctx.output_dir / "model",
        base_model_id=upstream_model_id(ctx.tracker, ctx.upstream_output("sft"), ctx.logger),
        params={
            "task": {"name": cfg.task.name, "options": task.options()},
            "datasets": {d.name: d.digest for d in datasets},
            "config": cfg.model_dump(mode="json"),
        },
    )
    return metrics
