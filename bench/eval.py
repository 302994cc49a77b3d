"""Eval benchmark: how fast a model of the tiny config's shape scores option likelihoods (tokens/s)
and answers greedily (new tokens/s) at a few batch sizes, and, with --stage, the eval stage's wall
time on the models a work dir's store holds (its table is printed too).

The micro benchmark uses a randomly initialised model (speed does not depend on the weights) on
whatever device torch sees. Prints a JSON line last.

    python bench/eval.py [--batch-sizes 1 8 32] [--stage --workdir .z2h --items 100 --workers 2]
    python bench/eval.py --batch-sizes 2 --pairs 8 --new-tokens 8 --repeats 1   # smallest (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from stages.common.generate import Sampling, generate
from stages.common.model import GPTConfig, build
from stages.eval.score import continuation_logprobs

TINY = GPTConfig(vocab_size=4096, seq_len=256, n_layer=4, n_head=4, d_model=128)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: kernels chosen, caches filled
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _tokens(rng: torch.Generator, count: int) -> list[int]:
    return torch.randint(0, 4000, (count,), generator=rng).tolist()


def micro(args: argparse.Namespace, device: str) -> dict[str, float]:
    model = build(TINY, seed=0, device=device).eval()
    rng = torch.Generator().manual_seed(0)
    greedy = Sampling(max_new_tokens=args.new_tokens)
    results: dict[str, float] = {}
    for batch in args.batch_sizes:
        # Multiple choice: pairs of a 96-token question and a 12-token option.
        pairs = [(_tokens(rng, 96), _tokens(rng, 12)) for _ in range(args.pairs)]
        seconds = _timed(lambda pairs=pairs, batch=batch: continuation_logprobs(model, pairs, batch), args.repeats)
        results[f"score_tokens_per_s_b{batch}"] = args.pairs * 108 / seconds
        # Greedy answers: `batch` 48-token prompts (no stop token is ever hit).
        prompts = [_tokens(rng, 48) for _ in range(batch)]
        seconds = _timed(
            lambda prompts=prompts, batch=batch: generate(model, prompts, greedy, 4095, batch_size=batch), args.repeats
        )
        results[f"greedy_tokens_per_s_b{batch}"] = batch * args.new_tokens / seconds
    return results


def stage(workdir: Path, items: int, workers: int) -> dict[str, float]:
    """The eval stage on the newest tokenizer/pretrain/sft/rl entries of the store, on a local Ray."""
    import ray

    from pipeline.local import local_context
    from stages.eval import stage as eval_stage
    from stages.eval.config import CHOICE_SETS, EvalConfig
    from use.locate import store_models

    store = workdir / "store"
    newest = {}
    for entry in reversed(store_models(store)):  # oldest first: the newest of each stage wins
        newest[entry.stage] = entry.path
    tokenizers = sorted((store / "tokenizer").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not newest or not tokenizers:
        raise SystemExit(f"{store}: needs a tokenizer entry and at least one model entry (run the pipeline first)")
    newest["tokenizer"] = tokenizers[-1].parent
    cfg = EvalConfig(
        choice=dict.fromkeys(CHOICE_SETS, items),
        tasks={"arith": items, "asdiv": items},  # counts; options as the task's defaults
        adherence_prompts=max(items // 3, 1),
        workers=workers,
    )
    root = Path(workdir) / "scratch" / "bench-eval"
    ctx = local_context("eval", cfg, root, upstream=newest, seed=1337, workdir=workdir.absolute())
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        start = time.perf_counter()
        metrics = ray.get(ray.remote(num_cpus=0)(eval_stage.run).remote(ctx))
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    print((ctx.output_dir / "table.md").read_text(), file=sys.stderr)
    return {"stage_seconds": seconds, "items_per_set": items, "workers": workers} | metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--pairs", type=int, default=64, help="question/option pairs scored per batch size")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per answer")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up; the best counts")
    parser.add_argument("--stage", action="store_true", help="also time the eval stage on the store's models")
    parser.add_argument("--workdir", type=Path, default=Path(".z2h"))
    parser.add_argument("--items", type=int, default=100, help="items per choice set and task (--stage)")
    parser.add_argument("--workers", type=int, default=2, help="eval tasks per model (--stage)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"device": device, "threads": torch.get_num_threads()} | micro(args, device)
    if args.stage:
        result |= stage(args.workdir, args.items, args.workers)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
