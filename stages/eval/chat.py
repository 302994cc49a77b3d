"""`z2h chat` and `z2h sample`: talk to a model in the terminal, or get one-shot completions.

Chat keeps the whole conversation in the chat template and streams each reply token by token
with the shared engine (`stages.common.generate.stream`). When the conversation outgrows the
model's context, the oldest exchanges are dropped (and you are told). `/reset` starts over,
`/quit` (or Ctrl-D) leaves; Ctrl-C stops a reply that is being written, or leaves at the prompt.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from pipeline.errors import UsageError

PROMPT = "you> "
REPLY = "model> "
HELP = "/reset clears the conversation, /quit leaves (so does Ctrl-D)"


# -- shared arguments ----------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        metavar="RUN_ID|MODEL_PATH|STAGE",
        help="an MLflow run id (pipeline or stage run), a model folder, a store entry (sft/3fa2...) or "
        "a stage name (pretrain, sft, rl); default: the latest model in the store (rl, else sft, else pretrain)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".z2h"), help="the pipeline's work dir (default .z2h)")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the work dir's)"
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer folder (default: the one the model was trained with)"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument(
        "--top-k", type=int, default=50, help="sample from the k likeliest tokens (default 50; 0 = all)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")


@dataclass
class Loaded:
    model: object
    tokenizer: object
    stage: str | None
    label: str


def load_model(args: argparse.Namespace) -> Loaded:
    """The model and tokenizer the arguments name; every problem is a one-line UsageError."""
    from stages.common.model import load_pretrained
    from stages.common.tokenizer import TokenizerError, load
    from stages.eval.locate import resolve
    from stages.eval.models import TokenizerMismatch, check_tokenizer

    if args.temperature < 0 or args.top_k < 0 or args.max_new_tokens < 1:
        raise UsageError("--temperature and --top-k must be >= 0 and --max-new-tokens >= 1")
    workdir = args.workdir.expanduser().absolute()
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir / 'mlflow.db'}"
    found = resolve(args.target, workdir, uri)
    tokenizer_dir = args.tokenizer or found.tokenizer
    if tokenizer_dir is None:
        raise UsageError(f"no tokenizer is recorded for {found.label}; pass --tokenizer FOLDER")
    try:
        tokenizer = load(tokenizer_dir)
        check_tokenizer(found.folder, tokenizer, recorded=found.tokenizer)
    except (TokenizerError, TokenizerMismatch) as exc:
        raise UsageError(str(exc)) from None
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_pretrained(found.folder, device=device).eval()
    return Loaded(model, tokenizer, found.stage, found.label)


def sampling_from(args: argparse.Namespace):
    from stages.common.generate import Sampling

    return Sampling(args.max_new_tokens, args.temperature, args.top_k or None)


class TextStream:
    """Token ids in, text out, without splitting a UTF-8 character that spans two tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.decoder.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


# -- chat ----------------------------------------------------------------------------------------
@dataclass
class Conversation:
    """The turns so far, rendered with the chat template, kept within the model's context."""

    tokenizer: object
    seq_len: int
    min_reply: int = 32  # tokens always left for the reply
    messages: list[dict[str, str]] = field(default_factory=list)

    def prompt(self, text: str) -> tuple[list[int], list[str]]:
        """Ids for the conversation plus the user's new message, and notes on what was dropped or cut."""
        from stages.common.chat import render_prompt
        from stages.eval.choice import TooLong, chat_prompt, fit_text

        notes = []
        room = self.seq_len - self.min_reply
        history = list(self.messages)
        while True:
            ids = render_prompt(self.tokenizer, [*history, {"role": "user", "content": text}])
            if len(ids) <= room or not history:
                break
            history = history[2:]  # drop the oldest exchange
        if len(history) < len(self.messages):
            dropped = (len(self.messages) - len(history)) // 2
            notes.append(f"[context full: forgot the oldest {dropped} exchange(s)]")
        if len(ids) > room:
            try:
                ids, _ = fit_text(chat_prompt(self.tokenizer), text, self.tokenizer, room)
            except TooLong:
                raise ValueError(f"the model's {self.seq_len}-token context cannot hold this message") from None
            notes.append(f"[your message was cut to its last part to fit the {self.seq_len}-token context]")
        self.messages = history
        return ids, notes

    def add(self, user: str, reply: str) -> None:
        if reply.strip():  # an empty reply cannot be rendered as a turn: the exchange is left out
            self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def reply_stream(loaded: Loaded, ids: list[int], sampling, seed: int | None) -> Iterator[int]:
    from stages.common.chat import ASSISTANT_END
    from stages.common.generate import stream

    budget = min(sampling.max_new_tokens, loaded.model.cfg.seq_len - len(ids))
    return stream(
        loaded.model, ids, replace(sampling, max_new_tokens=budget), loaded.tokenizer.special(ASSISTANT_END), seed
    )


def chat_loop(
    loaded: Loaded,
    sampling,
    seed: int | None,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> int:
    from stages.common.chat import ASSISTANT_END

    stop = loaded.tokenizer.special(ASSISTANT_END)
    conversation = Conversation(loaded.tokenizer, loaded.model.cfg.seq_len)
    params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    out.write(f"z2h chat: {loaded.label} ({params:.1f}M parameters, {conversation.seq_len}-token context)\n")
    knobs = f"temperature {sampling.temperature:g}, top-k {sampling.top_k or 'all'}"
    out.write(f"{knobs}; {HELP}\n")
    if loaded.stage == "pretrain":
        out.write("note: a base model was never taught the chat format; expect it to ramble\n")
    out.flush()
    turn = 0
    while True:
        try:
            text = read(PROMPT)
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n")
            return 0
        command = text.strip()
        if not command:
            continue
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            conversation.messages.clear()
            out.write("[conversation cleared]\n")
            out.flush()
            continue
        if command.startswith("/") and " " not in command:
            out.write(f"unknown command {command}; {HELP}\n")
            out.flush()
            continue
        try:
            ids, notes = conversation.prompt(text)
        except ValueError as exc:
            out.write(f"[{exc}]\n")
            out.flush()
            continue
        for note in notes:
            out.write(note + "\n")
        out.write(REPLY)
        out.flush()
        decoder, reply, ended = TextStream(loaded.tokenizer), [], False
        turn_seed = None if seed is None else seed + turn
        try:
            for token in reply_stream(loaded, ids, sampling, turn_seed):
                if token == stop:
                    ended = True
                    break
                reply.append(decoder.push(token))
                out.write(reply[-1])
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]\n")
            out.flush()
            continue  # the stopped exchange is not kept
        reply.append(decoder.flush())
        out.write(reply[-1] + ("\n" if ended else " [reply cut at the token budget]\n"))
        out.flush()
        conversation.add(text, "".join(reply))
        turn += 1


def run_chat(args: argparse.Namespace) -> int:
    loaded = load_model(args)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    return chat_loop(loaded, sampling_from(args), args.seed)


# -- sample --------------------------------------------------------------------------------------
def add_sample_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
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


def run_sample(args: argparse.Namespace) -> int:
    from stages.common.chat import ASSISTANT_END, render_prompt
    from stages.common.generate import generate

    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise UsageError("no prompt: pass --prompt TEXT or write prompts to stdin, one per line")
    if args.num_samples < 1:
        raise UsageError("--num-samples must be >= 1")
    loaded = load_model(args)
    tokenizer, seq_len = loaded.tokenizer, loaded.model.cfg.seq_len
    chat = args.format == "chat" or (args.format == "auto" and loaded.stage in ("sft", "rl"))
    if chat:
        ids = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        stop = tokenizer.special(ASSISTANT_END)
    else:
        ids = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
        stop = tokenizer.bos_id
    too_long = [i for i, p in enumerate(ids) if len(p) >= seq_len]
    if too_long:
        raise UsageError(f"prompt {too_long[0] + 1} has {len(ids[too_long[0]])} tokens; the context is {seq_len}")
    batch = [p for p in ids for _ in range(args.num_samples)]
    replies = generate(loaded.model, batch, sampling_from(args), stop, seed=args.seed)
    for index, reply in enumerate(replies):
        prompt = prompts[index // args.num_samples]
        text = tokenizer.decode(t for t in reply if t < tokenizer.bos_id)
        if args.json:
            record = {"model": loaded.label, "prompt": prompt, "sample": index % args.num_samples, "completion": text}
            print(json.dumps(record, ensure_ascii=False))
        elif chat:
            print(f"{PROMPT}{prompt}\n{REPLY}{text}\n")
        else:
            print(f"{prompt}{text}\n")
    return 0
