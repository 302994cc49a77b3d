"""Pretraining benchmark: tokens/s and MFU of a fixed GPT, with the matmul peak measured in the
same run; the stage's training loop (one worker) against a plain single-process PyTorch loop of
the same model and data (the machinery's overhead); each mesh (tp2, pp2, dp2, pp2xtp2) against
the single worker. Data: random tokens (throughput does not depend on what they say).

    python bench/pretrain.py [--steps 8] [--rounds 2] [--meshes tp2,pp2,dp2,pp2xtp2]
    torchrun --nproc-per-node 8 bench/pretrain.py --model gpt2 --device cuda --bf16 --dp 2 --tp 2 --pp 2

Under torchrun it measures one mesh (its processes, its flags) and needs only torch, numpy,
pydantic and safetensors: no Ray, no MLflow. Prints a JSON line last. Smallest runs (the CI
smoke test, seconds):

    python bench/pretrain.py --model tiny --steps 4 --rounds 1 --tokens 20000 --micro-batch 2 --meshes ''
    torchrun --standalone --nproc-per-node 2 bench/pretrain.py --model tiny --steps 2 --tokens 20000 \
        --micro-batch 2 --tp 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.common.model import build, cross_entropy  # noqa: E402
from stages.common.shards import ShardWriter, Split, WindowLoader, write_index  # noqa: E402
from stages.pretrain.config import PretrainConfig  # noqa: E402
from stages.pretrain.measure import matmul_peak_flops  # noqa: E402
from stages.pretrain.optim import build_optimizer  # noqa: E402
from stages.pretrain.train import Job, train  # noqa: E402

MODELS = {
    "small": dict(seq_len=256, n_layer=4, n_head=4, d_model=256),
    "gpt2": dict(seq_len=1024, n_layer=12, n_head=12, d_model=768),
    "tiny": dict(seq_len=64, n_layer=2, n_head=2, d_model=64),
}
MESHES = {"tp2": dict(tp=2), "pp2": dict(pp=2), "dp2": dict(dp=2), "pp2xtp2": dict(pp=2, tp=2)}
VOCAB = 4096


def write_random_shards(folder: Path, tokens: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    splits = {}
    for split, total in (("train", tokens), ("val", tokens // 10)):
        writer = ShardWriter(folder, split, np.uint16, shard_tokens=total)
        lengths = np.full(total // 1000, 1000)
        writer.add(rng.integers(0, VOCAB, size=int(lengths.sum())), lengths)
        splits[split] = writer.close()
    write_index(folder, np.uint16, VOCAB, 0, splits)
    return folder


def config(args: argparse.Namespace, peak: float | None, threads: int, **mesh) -> PretrainConfig:
    model = MODELS[args.model]
    return PretrainConfig.model_validate(
        dict(
            model=model,
            micro_batch=args.micro_batch,
            batch_tokens=args.micro_batch * model["seq_len"] * 2,  # two micro-steps on one worker
            max_steps=args.steps,
            warmup_steps=2,
            log_every=max(args.steps // 4, 1),  # the first reading (warm-up) is left out
            eval_every=args.steps,
            eval_batches=1,
            checkpoint_every=args.steps,
            precision="bf16" if args.bf16 else "fp32",
            compile=args.compile,
            cpus_per_worker=threads,
            gpus_per_worker=1 if args.device == "cuda" else 0,
            peak_flops=peak,
            pp_microbatches=2,
            **mesh,
        )
    )


def plain_loop(cfg: PretrainConfig, shards: Path, device: torch.device) -> float:
    """The same model, optimiser, data and steps in the plainest PyTorch: tokens/s after warm-up."""
    split = Split(shards, "train")
    model = build(cfg.model.gpt(split.vocab_size), seed=0, device=device)
    optimizer = build_optimizer(list(model.parameters()), cfg)
    loader = WindowLoader(split, cfg.model.seq_len, cfg.micro_batch, seed=0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    warmup = max(cfg.max_steps // 4, 1)
    for step in range(cfg.max_steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for _ in range(cfg.accumulation):
            inputs, targets = (torch.from_numpy(a.copy()).to(device) for a in loader.next_batch())
            with autocast:
                loss = cross_entropy(model(inputs), targets)
            (loss / cfg.accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss.item()  # the stage loop reads its loss every step too
    _sync(device)
    return (cfg.max_steps - warmup) * cfg.batch_tokens / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def staged(cfg: PretrainConfig, shards: Path) -> dict[str, float]:
    from stages.pretrain.launch import run_local

    with tempfile.TemporaryDirectory() as folder:
        return run_local(Job(cfg, shards, Path(folder) / "ckpt", seed=0)).metrics


def torchrun_main(args: argparse.Namespace) -> int:
    """One mesh on the processes torchrun started; rank 0 reports."""
    rank = int(os.environ["RANK"])
    threads = max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"]))
    cfg = config(args, None, threads, dp=args.dp, tp=args.tp, pp=args.pp)
    folder = Path(args.workdir)
    if rank == 0:
        write_random_shards(folder / "shards", args.tokens)
    import torch.distributed as dist

    from stages.common.parallel.mesh import ensure_process_group, pick_device

    ensure_process_group(pick_device(args.device == "cuda"))
    if dist.is_initialized():  # one process (WORLD_SIZE=1) trains without a group
        dist.barrier()
    metrics = train(Job(cfg, folder / "shards", folder / f"ckpt-{int(time.time())}", seed=0)).metrics
    if rank == 0:
        keys = ("tokens_per_s", "mfu", "peak_flops", "params")
        print(json.dumps({"mesh": {"dp": args.dp, "tp": args.tp, "pp": args.pp}, **{k: metrics[k] for k in keys}}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="plain/single-worker pairs; the best of each counts")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=400_000, help="random tokens in the train split")
    parser.add_argument("--meshes", default=",".join(MESHES), help="comma-separated, or empty for none")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of the single worker; 0: all cores")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--dp", type=int, default=1, help="torchrun only")
    parser.add_argument("--tp", type=int, default=1, help="torchrun only")
    parser.add_argument("--pp", type=int, default=1, help="torchrun only")
    parser.add_argument("--workdir", default=tempfile.gettempdir() + "/z2h-bench-pretrain", help="torchrun only")
    args = parser.parse_args()
    if "WORLD_SIZE" in os.environ:
        return torchrun_main(args)

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    # Best of several tries: other processes share this machine, and a slow try says only that.
    peak = max(matmul_peak_flops(device, dtype, seconds=0.5) for _ in range(3))
    with tempfile.TemporaryDirectory() as folder:
        shards = write_random_shards(Path(folder) / "shards", args.tokens)
        single_cfg = config(args, peak, threads)
        plain_rates, single_rates = [], []
        for _ in range(args.rounds):  # alternated, so both see the same background load
            plain_rates.append(plain_loop(single_cfg, shards, device))
            single_rates.append(staged(single_cfg, shards)["tokens_per_s"])
        plain, single = max(plain_rates), max(single_rates)
        meshes = {}
        for name in filter(None, args.meshes.split(",")):
            cfg = config(args, peak, max(1, threads // PretrainConfig(**MESHES[name]).world), **MESHES[name])
            rate = staged(cfg, shards)["tokens_per_s"]
            meshes[name] = {"tokens_per_s": round(rate, 1), "relative_to_single": round(rate / single, 3)}
    flops = single_cfg.model.gpt(VOCAB).flops_per_token()
    result = {
        "model": args.model,
        "params": single_cfg.model.gpt(VOCAB).num_params(),
        "device": args.device,
        "threads": threads,
        "dtype": "bf16" if args.bf16 else "fp32",
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "plain_tokens_per_s": round(plain, 1),
        "plain_mfu": round(plain * flops / peak, 4),
        "single_tokens_per_s": round(single, 1),
        "single_mfu": round(single * flops / peak, 4),
        "single_overhead_vs_plain": round(plain / single - 1, 4),
        "rounds": {"plain": [round(r, 1) for r in plain_rates], "single": [round(r, 1) for r in single_rates]},
        "meshes": meshes,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
