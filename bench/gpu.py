"""GPU checks with torch alone (no Ray, no MLflow): the code paths a CPU machine cannot exercise.

    python bench/gpu.py [--model gpt2] [--steps 20] [--batch 16] [--skip CHECK ...]

Without a GPU, `--device cpu` dry-runs the checks (the CI smoke test: seconds, compilation skipped):

    python bench/gpu.py --device cpu --model tiny --steps 2 --batch 2 --prompts 2 --new-tokens 8 --skip train_compiled

- bf16 matmul peak, measured (the MFU denominator);
- flash attention: the model's attention runs with SDPA restricted to the flash kernel, and
  agrees with the math kernel;
- training steps of the shared GPT in bf16 autocast, eager and `torch.compile`d: tokens/s, MFU,
  and the compiled loss against the eager one;
- NCCL: a one-rank process group, all-reduce and a DeviceMesh (gloo on CPU);
- generation with the KV cache against recomputing the whole sequence: tokens/s of each and
  whether greedy tokens agree (fp32 and bf16).

Prints one JSON line last. The stage's own training loop on NCCL is measured by
`torchrun --nproc-per-node 1 bench/pretrain.py --model gpt2 --device cuda --bf16 --compile`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.common.generate import Sampling, generate  # noqa: E402
from stages.common.model import GPTConfig, build, cross_entropy  # noqa: E402

MODELS = {
    "gpt2": GPTConfig(vocab_size=50304, seq_len=1024, n_layer=12, n_head=12, d_model=768),
    "small": GPTConfig(vocab_size=4096, seq_len=256, n_layer=4, n_head=4, d_model=256),
    "tiny": GPTConfig(vocab_size=512, seq_len=64, n_layer=2, n_head=2, d_model=64),
}


DEVICE = "cuda"  # --device cpu dry-runs every check on a machine without a GPU


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def matmul_peak(size: int) -> float:
    a, b = (torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    return 2 * size**3 / timed(lambda: a @ b, 10)


def flash_attention(cfg: GPTConfig, batch: int) -> dict[str, object]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = build(cfg, seed=0, device=DEVICE)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if the flash kernel cannot take it
            flash = model(tokens).float()
            flash_s = timed(lambda: model(tokens), 5)
        with sdpa_kernel([SDPBackend.MATH]):
            math = model(tokens).float()
            math_s = timed(lambda: model(tokens), 5)
    return {
        "flash_forward_ms": round(1e3 * flash_s, 2),
        "math_forward_ms": round(1e3 * math_s, 2),
        "flash_vs_math_max_abs_logit_diff": round((flash - math).abs().max().item(), 4),
    }


def training(cfg: GPTConfig, batch: int, steps: int, compiled: bool, peak: float) -> dict[str, float]:
    torch.manual_seed(0)
    model = build(cfg, seed=0, device=DEVICE)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=DEVICE == "cuda")
    data = torch.randint(0, cfg.vocab_size, (steps + 3, batch, cfg.seq_len + 1), device=DEVICE)
    losses = []

    def step(index: int) -> None:
        inputs, targets = data[index, :, :-1], data[index, :, 1:]
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = cross_entropy(step_model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    compile_start = time.perf_counter()
    for index in range(3):  # warm-up (and compilation)
        step(index)
    sync()
    warmup_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for index in range(3, steps + 3):
        step(index)
    sync()
    seconds = time.perf_counter() - start
    tokens_per_s = steps * batch * cfg.seq_len / seconds
    return {
        "tokens_per_s": round(tokens_per_s),
        "mfu": round(tokens_per_s * cfg.flops_per_token() / peak, 4),
        "warmup_s": round(warmup_s, 1),
        "first_loss": round(losses[0].item(), 5),
        "last_loss": round(losses[-1].item(), 5),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None,
    }


def nccl() -> dict[str, object]:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    # One rank needs no rendezvous: an in-memory store, no port that another run could hold.
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh(DEVICE, (1, 1, 1), mesh_dim_names=("pp", "dp", "tp"))
        value = torch.ones(4, device=DEVICE)
        dist.all_reduce(value, group=mesh["dp"].get_group())
        return {"backend": dist.get_backend(), "all_reduce_ok": bool(value.eq(1).all()), "mesh": str(mesh.shape)}
    finally:
        dist.destroy_process_group()


def generation(cfg: GPTConfig, prompts: int, prompt_len: int, new_tokens: int, dtype: torch.dtype) -> dict:
    model = build(cfg, seed=0, device=DEVICE).to(dtype).eval()
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, cfg.vocab_size, (prompts, prompt_len), generator=generator).tolist()
    greedy = Sampling(max_new_tokens=new_tokens)
    rates, replies = {}, {}
    for cached in (True, False):
        generate(model, batch[:2], Sampling(max_new_tokens=4), stop_id=-1, use_cache=cached)  # warm-up
        sync()
        start = time.perf_counter()
        replies[cached] = generate(model, batch, greedy, stop_id=-1, use_cache=cached, batch_size=prompts)
        sync()
        rates[cached] = sum(map(len, replies[cached])) / (time.perf_counter() - start)
    same = sum(a == b for a, b in zip(replies[True], replies[False], strict=True))
    return {
        "cached_tokens_per_s": round(rates[True]),
        "uncached_tokens_per_s": round(rates[False]),
        "speedup": round(rates[True] / rates[False], 2),
        "identical_replies": f"{same}/{prompts}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--skip", nargs="+", default=[], metavar="CHECK", help="checks left out, by name")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    cfg = MODELS[args.model]
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "params": cfg.num_params(),
    }
    peak = matmul_peak(8192 if DEVICE == "cuda" else 1024)
    result["bf16_matmul_peak_tflops"] = round(peak / 1e12, 1)
    prompt_len = min(64, cfg.seq_len // 2)
    checks = {
        "flash_attention": lambda: flash_attention(cfg, args.batch),
        "train_eager": lambda: training(cfg, args.batch, args.steps, False, peak),
        "train_compiled": lambda: training(cfg, args.batch, args.steps, True, peak),
        "nccl": nccl,
        "generate_fp32": lambda: generation(cfg, args.prompts, prompt_len, args.new_tokens, torch.float32),
        "generate_bf16": lambda: generation(cfg, args.prompts, prompt_len, args.new_tokens, torch.bfloat16),
    }
    unknown = sorted(set(args.skip) - set(checks))
    if unknown:
        parser.error(f"--skip {' '.join(unknown)}: no such check; the checks are {', '.join(checks)}")
    for name, check in checks.items():
        if name in args.skip:
            result[name] = "skipped"
            continue
        start = time.perf_counter()
        try:
            result[name] = check()
        except Exception as exc:  # one failing path must not hide the others' numbers
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"{name}: {result[name]} ({time.perf_counter() - start:.1f} s)", flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if isinstance(result["train_eager"], dict) and isinstance(result["train_compiled"], dict):
        eager, compiled = result["train_eager"], result["train_compiled"]
        if "tokens_per_s" in eager and "tokens_per_s" in compiled:
            result["compile_speedup"] = round(compiled["tokens_per_s"] / eager["tokens_per_s"], 3)
            result["compile_first_loss_diff"] = round(abs(compiled["first_loss"] - eager["first_loss"]), 5)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
