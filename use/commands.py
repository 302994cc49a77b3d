"""`z2h chat`, `z2h sample`, `z2h serve` and `z2h export`: their arguments and what they run.

Importing this module costs only argparse, so the CLI can build its parser (and `z2h --help`)
without torch; the model and its engine load when a command runs. Where the run lives (`-c CONFIG`,
`--workdir`, `--tracking-uri`, `--set`) is the CLI's, shared with every command: the resolved
`RunConfig` arrives as `args.run_config`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import UsageError


class ModelCommand(NamedTuple):
    """A model command, the shape of a stage's `StageCommand`; declared here because that module brings
    pydantic, which `z2h --help` does without."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="a stage name (pretrain or base, sft, rl), a store entry (sft/3fa2...), a model folder, an MLflow "
        "run id (pipeline or stage run) or a registered model (models:/<pipeline>@base|sft|rl|latest); default: "
        "the latest model in the store (rl, else sft, else pretrain)",
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer folder (default: the one the model was trained with)"
    )


def _model_args(parser: argparse.ArgumentParser) -> None:
    _target_args(parser)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument(
        "--top-k", type=int, default=50, help="sample from the k likeliest tokens (default 50; 0 = all)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")


def _sample_args(parser: argparse.ArgumentParser) -> None:
    _model_args(parser)
    parser.set_defaults(max_new_tokens=64, seed=0)
    parser.add_argument(
        "-p", "--prompt", action="append", default=[], help="a prompt (repeatable); default: one per line of stdin"
    )
    parser.add_argument("-n", "--num-samples", type=int, default=1, help="completions per prompt (default 1)")
    parser.add_argument(
        "--format",
        choices=("auto", "chat", "text"),
        default="auto",
        help="chat: the prompt is a user turn in the chat template; text: plain text to continue; "
        "auto: chat for sft/rl models, text otherwise",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per completion")


def _sampling(args: argparse.Namespace):
    from stages.common.generate import Sampling

    if args.temperature < 0 or args.top_k < 0 or args.max_new_tokens < 1:
        raise UsageError("--temperature and --top-k must be >= 0 and --max-new-tokens >= 1")
    return Sampling(args.max_new_tokens, args.temperature, args.top_k or None)


def _open_model(args: argparse.Namespace):
    from use.loading import load_model
    from use.locate import Place, resolve

    return load_model(resolve(args.target, Place.of(args.run_config)), args.tokenizer)


def run_chat(args: argparse.Namespace) -> int:
    from use.chat import chat_loop, start_threads
    from use.sigint import release_sigint

    sampling = _sampling(args)  # SIGINT is held since z2h started (pipeline.cli)
    loaded = _open_model(args)
    start_threads(loaded)
    release_sigint()
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    return chat_loop(loaded, sampling, args.seed)


def run_sample(args: argparse.Namespace) -> int:
    from use.sample import complete, read_prompts, write

    prompts = read_prompts(args.prompt, sys.stdin)
    if args.num_samples < 1:
        raise UsageError("--num-samples must be >= 1")
    sampling = _sampling(args)
    loaded = _open_model(args)
    chat = args.format == "chat" or (args.format == "auto" and loaded.chat)
    write(complete(loaded, prompts, args.num_samples, chat, sampling, args.seed), loaded.label, chat, args.json)
    return 0


def _serve_args(parser: argparse.ArgumentParser) -> None:
    _target_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument(
        "--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 (default: $Z2H_API_KEY, else none)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="requests decoded together (default 32)")
    parser.add_argument(
        "--max-queue", type=int, default=256, help="requests waiting for a place; more get 429 (default 256)"
    )


def run_serve(args: argparse.Namespace) -> int:
    from use.serve import serve

    if args.max_batch < 1 or args.max_queue < 0 or not 0 <= args.port <= 65535:
        raise UsageError("--max-batch must be >= 1, --max-queue >= 0 and --port in 0..65535")
    api_key = args.api_key or os.environ.get("Z2H_API_KEY") or None
    return serve(_open_model(args), args.host, args.port, api_key, args.max_batch, args.max_queue)


def _export_args(parser: argparse.ArgumentParser) -> None:
    _target_args(parser)
    parser.add_argument(
        "out", type=Path, metavar="OUT", help="folder for the Hugging Face model (transformers loads it)"
    )
    parser.add_argument("--force", action="store_true", help="write into OUT even when it is not empty")
    parser.add_argument(
        "--push",
        metavar="REPO",
        default=None,
        help="then upload OUT to this Hub repo (network; hf auth login or $HF_TOKEN)",
    )
    parser.add_argument("--no-log", action="store_true", help="do not log the export to the model's MLflow run (hf/)")


def run_export(args: argparse.Namespace) -> int:
    from use.export import export
    from use.locate import Place, resolve

    place = Place.of(args.run_config)
    found = resolve(args.target, place)
    done = export(
        found,
        args.out,
        force=args.force,
        tokenizer_dir=args.tokenizer,
        tracking_uri=place.tracking_uri,
        log=not args.no_log,
        push=args.push,
    )
    print(done.summary(found.label))
    return 0


COMMANDS = {
    "chat": ModelCommand(
        help="chat in the terminal with the latest model (or a stage, run id or model folder); streams tokens",
        configure=_model_args,
        run=run_chat,
    ),
    "sample": ModelCommand(
        help="one-shot completions from any model (base: plain text; sft/rl: chat template)",
        configure=_sample_args,
        run=run_sample,
    ),
    "export": ModelCommand(
        help="write a model as a Hugging Face folder (Qwen3/Llama, fast tokenizer, chat template, model card)",
        configure=_export_args,
        run=run_export,
    ),
    "serve": ModelCommand(
        help="an OpenAI-compatible HTTP server (chat, completions, streaming) with a chat page at /",
        configure=_serve_args,
        run=run_serve,
    ),
}
