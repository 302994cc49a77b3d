"""Serving benchmark: requests/s, output tokens/s and time to first token of `z2h serve` (its own
process, real HTTP, streaming clients) at 1, 8 and 32 concurrent clients, against the same prompts
run one at a time through the engine in this process (no HTTP, no batching): the speed-up that
continuous batching gives. Greedy, so every reply is also checked against the one-at-a-time run.

Each client sends its next request as soon as its last one ends (a closed loop); prompts are pieces
of Python's documentation of different lengths, sent to /v1/completions as plain text. A reply ends at
the token budget or its first special token, in both runs. Time to first token is from sending the
request to the first piece of reply text (one at a time: to the first token out of the engine).

Model: `--target` as `z2h serve` takes it (with `--workdir`), else a random init of the tiny config's
shape with a small tokenizer trained on the same documentation (replies then run to the budget).
On a machine whose cores are shared with other work, `--threads 1` keeps torch's threads from
waiting on each other. Prints a JSON line last.

    python bench/serve.py [--target sft --workdir .z2h] [--clients 1 8 32] [--requests 64] [--max-tokens 64]
    python bench/serve.py --smoke   # smallest (CI smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the project, not bench/, first
    sys.path.insert(0, str(REPO))

from stages.common.generate import Sampling, stream  # noqa: E402
from stages.common.model import GPTConfig, build, load_pretrained, save_pretrained  # noqa: E402
from stages.common.tokenizer import Tokenizer, load  # noqa: E402


def scratch_model(folder: Path, smoke: bool) -> tuple[Path, Path]:
    """A random GPT of the tiny config's shape (smaller for --smoke) and a tokenizer trained on the docs."""
    from stages.tokenizer.train import train_tokenizer

    texts = [topics[name] for name in sorted(topics)[: 20 if smoke else 120]]
    tokenizer = train_tokenizer(texts, 384 if smoke else 4096)[0]
    tokenizer.save(folder / "tokenizer")
    shape = dict(seq_len=64, n_layer=2, d_model=64) if smoke else dict(seq_len=256, n_layer=4, d_model=128)
    save_pretrained(build(GPTConfig(vocab_size=tokenizer.vocab_size, n_head=4, **shape), seed=0), folder / "model")
    return folder / "model", folder / "tokenizer"


def prompts_for(tokenizer: Tokenizer, count: int, longest: int) -> list[str]:
    """`count` texts of 4..`longest` tokens, cut from the docs."""
    words = " ".join(topics[name] for name in sorted(topics)[200:260]).split()
    texts, start = [], 0
    for index in range(count):
        size = 4 + (index * 7) % max(longest - 4, 1)
        text = " ".join(words[start : start + size])
        while len(tokenizer.encode(text)) > longest:
            text = text.rsplit(" ", 1)[0]
        texts.append(text)
        start += size
    return texts


def alone(model, tokenizer: Tokenizer, texts: list[str], max_tokens: int) -> dict:
    """Each prompt through the engine by itself, one after another."""
    specials = set(tokenizer.specials.values())
    greedy = Sampling(max_new_tokens=max_tokens)
    replies, firsts = [], []
    started = time.perf_counter()
    for text in texts:
        sent, tokens = time.perf_counter(), []
        for token in stream(model, [tokenizer.bos_id, *tokenizer.encode(text)], greedy, stop_id=-1):
            if not tokens:
                firsts.append(time.perf_counter() - sent)
            tokens.append(token)
            if token in specials:
                break
        replies.append(tokens)
    seconds = time.perf_counter() - started
    texts_out = [  # decoded as the server does (Python's UTF-8 decoder)
        tokenizer.decode_bytes(t[:-1] if t and t[-1] in specials else t).decode("utf-8", "replace") for t in replies
    ]
    produced = sum(map(len, replies))
    return {
        "requests_per_s": len(texts) / seconds,
        "output_tokens_per_s": produced / seconds,
        "ttft_ms_p50": 1000 * statistics.median(firsts),
        "texts": texts_out,
    }


async def request(client, url: str, model: str, text: str, max_tokens: int) -> tuple[float, int, str]:
    """(seconds to the first text, completion tokens, reply text) of one streamed completion."""
    body = {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    sent, first, pieces, tokens = time.perf_counter(), None, [], 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
            for choice in chunk["choices"]:
                if choice["text"]:
                    first = first or time.perf_counter() - sent
                    pieces.append(choice["text"])
    return first if first is not None else time.perf_counter() - sent, tokens, "".join(pieces)


async def clients(url: str, model: str, texts: list[str], count: int, max_tokens: int) -> dict:
    import httpx

    results: list[tuple[float, int, str] | None] = [None] * len(texts)
    todo = iter(range(len(texts)))

    async def client_loop(client) -> None:
        for index in todo:  # shared: each client takes the next prompt when its last reply ends
            results[index] = await request(client, url, model, texts[index], max_tokens)

    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        await request(client, url, model, texts[0], 2)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(count)))
        seconds = time.perf_counter() - started
    firsts = sorted(r[0] for r in results)
    return {
        "clients": count,
        "requests_per_s": len(texts) / seconds,
        "output_tokens_per_s": sum(r[1] for r in results) / seconds,
        "ttft_ms_p50": 1000 * statistics.median(firsts),
        "ttft_ms_p90": 1000 * firsts[int(0.9 * (len(firsts) - 1))],
        "texts": [r[2] for r in results],
    }


def start_server(target: str, tokenizer: Path | None, max_batch: int, workdir: Path, log: Path, threads: int | None):
    """`z2h serve` in its own process; (process, base URL, model id) once it answers."""
    import httpx

    command = [sys.executable, "-m", "pipeline.cli", "serve", target, "--port", "0", "--max-batch", str(max_batch)]
    command += ["--workdir", str(workdir)] + (["--tokenizer", str(tokenizer)] if tokenizer else [])
    with log.open("w") as out:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}  # torch's threads there
        server = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        seen = log.read_text()
        if "z2h serve:" in seen:
            banner = seen[seen.index("z2h serve:") :]
            url, model = banner.split(" on ")[1].split()[0], banner.split("as model '")[1].split("'")[0]
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return server, url, model
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit(f"z2h serve did not come up:\n{log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="a model as z2h serve takes it (default: a random tiny-shape model)")
    parser.add_argument("--workdir", default=".z2h", help="where --target is looked up")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--longest-prompt", type=int, default=64, help="prompt tokens, at most")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, here and in the server")
    parser.add_argument("--smoke", action="store_true", help="smallest run: 2 clients, 4 short requests, tiny model")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.requests, args.max_tokens, args.longest_prompt = [1, 2], 4, 4, 8
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        if args.target:
            from use.loading import load_model
            from use.locate import Place, resolve

            loaded = load_model(resolve(args.target, Place(Path(args.workdir) / "store", None, Path(scratch))))
            model, tokenizer = loaded.model, loaded.tokenizer
            target, tokenizer_dir, source, workdir = args.target, None, loaded.label, Path(args.workdir)
        else:
            model_dir, tokenizer_dir = scratch_model(Path(scratch), args.smoke)
            device = "cuda" if torch.cuda.is_available() else "cpu"  # where the server puts it too
            model, tokenizer = load_pretrained(model_dir, device=device).eval(), load(tokenizer_dir)
            target, source, workdir = str(model_dir), "random init", Path(scratch)
        texts = prompts_for(tokenizer, max(args.requests, max(args.clients)), args.longest_prompt)
        stream(model, [tokenizer.bos_id, 1], Sampling(max_new_tokens=2), stop_id=-1).__next__()  # warm-up
        baseline = alone(model, tokenizer, texts, args.max_tokens)
        del model  # the server loads its own copy
        log = Path(scratch) / "serve.log"
        server, url, served = start_server(target, tokenizer_dir, max(args.clients), workdir, log, args.threads)
        try:
            levels = [asyncio.run(clients(url, served, texts, count, args.max_tokens)) for count in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=60)
    expected = baseline.pop("texts")
    for level in levels:
        level["replies_equal_alone"] = level.pop("texts") == expected
        level["speedup_vs_alone"] = level["output_tokens_per_s"] / baseline["output_tokens_per_s"]
    for level in levels:
        print(
            f"{level['clients']:>3} clients: {level['requests_per_s']:7.2f} req/s {level['output_tokens_per_s']:8.1f} "
            f"tok/s  TTFT p50 {level['ttft_ms_p50']:7.1f} ms p90 {level['ttft_ms_p90']:7.1f} ms  "
            f"x{level['speedup_vs_alone']:.2f} vs one at a time  same replies: {level['replies_equal_alone']}"
        )
    print(
        f"one at a time (engine, no HTTP): {baseline['requests_per_s']:.2f} req/s "
        f"{baseline['output_tokens_per_s']:.1f} tok/s  TTFT p50 {baseline['ttft_ms_p50']:.1f} ms"
    )
    report = {
        "bench": "serve",
        "model": source,
        "threads": torch.get_num_threads(),
        "requests": len(texts),
        "max_tokens": args.max_tokens,
        "alone": baseline,
        "served": levels,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
