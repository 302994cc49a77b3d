"""RL benchmark: generation tokens/s with the KV cache against recomputing every sequence (same
model, same prompts, same run; greedy tokens must agree), sampled rollout tokens/s, and the time
split between rollout and learning in GRPO steps of the stage's own learner (one process, no Ray).

Model: the newest SFT model in the work dir's store (and its tokenizer) when there is one, so
reply lengths are realistic; otherwise the tiny config's shape, randomly initialised, with a small
tokenizer trained on arithmetic text (replies then run to the token budget).
Prints a JSON line last.

    python bench/rl.py [--workdir .z2h] [--sft STORE_ENTRY] [--prompts 128] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from stages.common import tasks
from stages.common.chat import ASSISTANT_END, render_prompt
from stages.common.generate import Sampling, generate
from stages.common.model import GPTConfig, build, load_pretrained, save_pretrained
from stages.common.tokenizer import load
from stages.rl.learner import Job, Settings, train
from stages.rl.rollout import Item, LocalPool, Sampler, SamplerSpec


def newest_sft(workdir: Path) -> Path | None:
    entries = [p for p in (workdir / "store" / "sft").glob("*") if (p / "manifest.json").is_file()]
    return max(entries, key=lambda p: p.stat().st_mtime) if entries else None


def model_and_tokenizer(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path, str]:
    entry = Path(args.sft) if args.sft else newest_sft(Path(args.workdir))
    if entry is not None:
        manifest = json.loads((entry / "manifest.json").read_text())
        tokenizer = Path(args.workdir) / "store" / "tokenizer" / manifest["upstream"]["tokenizer"] / "tokenizer"
        return entry / "model", tokenizer, f"sft {entry.name}"
    from stages.tokenizer.train import train_tokenizer

    texts = [p.prompt + "\n" + p.solution for p in tasks.get("arith").problems("train", 3000, seed=1)]
    tokenizer = train_tokenizer(texts, 1024)[0]
    tokenizer.save(scratch / "tokenizer")
    # the tokenizer's own size: arithmetic text may not fill the 1024 asked for, and a sampled id past it cannot decode
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, seq_len=256, n_layer=4, n_head=4, d_model=128)
    save_pretrained(build(cfg, seed=0), scratch / "model")
    return scratch / "model", scratch / "tokenizer", "random init (tiny shape)"


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def generation(model, prompts: list[list[int]], stop: int, max_new: int) -> dict[str, float]:
    greedy = Sampling(max_new_tokens=max_new)
    generate(model, prompts[:8], greedy, stop)  # warm-up
    cached, cached_s = timed(lambda: generate(model, prompts, greedy, stop))
    uncached, uncached_s = timed(lambda: generate(model, prompts, greedy, stop, use_cache=False))
    hot = Sampling(max_new_tokens=max_new, temperature=1.0)
    sampled, sampled_s = timed(lambda: generate(model, prompts * 4, hot, stop, seed=0))
    tokens = sum(map(len, cached))
    return {
        "prompts": len(prompts),
        "tokens": tokens,
        "cached_tokens_per_s": tokens / cached_s,
        "uncached_tokens_per_s": sum(map(len, uncached)) / uncached_s,
        "cache_speedup": uncached_s / cached_s,
        "greedy_tokens_identical": cached == uncached,
        "sampled_tokens_per_s": sum(map(len, sampled)) / sampled_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".z2h")
    parser.add_argument("--sft", help="an SFT store entry (a folder holding model/ and manifest.json)")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps timed")
    parser.add_argument("--prompts-per-step", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        model_dir, tokenizer_dir, source = model_and_tokenizer(args, Path(folder))
        tokenizer = load(tokenizer_dir)
        stop = tokenizer.special(ASSISTANT_END)
        task = tasks.get("arith", max_steps=2, max_number=10)
        problems = task.problems("heldout", max(args.prompts, args.prompts_per_step * args.steps), seed=0)
        items = [Item(p, render_prompt(tokenizer, p.messages())) for p in problems]
        model = load_pretrained(model_dir).eval()
        gen = generation(model, [i.prompt for i in items[: args.prompts]], stop, args.max_new_tokens)

        settings = Settings(
            steps=args.steps,
            prompts_per_step=args.prompts_per_step,
            group_size=args.group_size,
            max_new_tokens=args.max_new_tokens,
            lr=3e-4,
            eval_every=args.steps + 1,
            pass_k=0,
            threads=args.threads,
        )
        spec = SamplerSpec(
            str(model_dir), str(tokenizer_dir), task, stop, Sampling(args.max_new_tokens, 1.0), threads=args.threads
        )
        job = Job(str(model_dir), items, items[:16], items[:16], stop, settings, LocalPool(Sampler(spec)), pad_id=stop)
        _, result = train(job)
    steps = result.history
    rollout = sum(h["rollout_seconds"] for h in steps)
    learn = sum(h.get("learn_seconds", 0.0) for h in steps)
    sync = sum(h["sync_seconds"] for h in steps)
    report = {
        "bench": "rl",
        "model": source,
        "threads": torch.get_num_threads(),
        "generation": gen,
        "grpo": {
            "steps": len(steps),
            "samples_per_step": args.prompts_per_step * args.group_size,
            "rollout_seconds_per_step": rollout / len(steps),
            "learn_seconds_per_step": learn / len(steps),
            "sync_seconds_per_step": sync / len(steps),
            "rollout_share": rollout / max(rollout + learn + sync, 1e-9),
            "rollout_tokens_per_s": result.metrics["rollout_tokens_per_s"],
            "learner_tokens_per_s": result.metrics.get("learner_tokens_per_s", 0.0),
            "mean_response_tokens": sum(h["response_length"] for h in steps) / len(steps),
            "reward_mean": [round(h["reward_mean"], 4) for h in steps],
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
