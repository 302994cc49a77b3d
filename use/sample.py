"""`z2h sample`: one-shot completions of a batch of prompts, each `num_samples` times.

A chat model gets each prompt as a user turn of the chat template and stops at `<|assistant_end|>`;
a base model continues the prompt as plain text and stops at the next document's `<|bos|>`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TextIO

from pipeline.errors import UsageError
from stages.common.text import problem
from use.chat import PROMPT, REPLY
from use.loading import Loaded


@dataclass(frozen=True)
class Completion:
    prompt: str
    sample: int  # 0 .. num_samples-1 for each prompt
    text: str


def read_prompts(given: list[str], stdin: TextIO) -> list[str]:
    """The prompts to complete: those given on the command line, else one per non-blank line of stdin.
    Bytes the locale cannot decode arrive as lone surrogates (surrogateescape) or fail the read; either
    way, and for NUL characters, the prompt is refused before a model loads."""
    try:
        prompts = given or [line.rstrip("\n") for line in stdin if line.strip()]
    except UnicodeDecodeError as exc:
        raise UsageError(f"stdin is not {exc.encoding} text ({exc.reason} at byte {exc.start})") from None
    if not prompts:
        raise UsageError("no prompt: pass --prompt TEXT or write prompts to stdin, one per line")
    for number, prompt in enumerate(prompts, start=1):
        reason = problem(prompt)
        if reason:
            raise UsageError(f"prompt {number} cannot be used as text: {reason}")
    return prompts


def complete(loaded: Loaded, prompts: list[str], num_samples: int, chat: bool, sampling, seed: int) -> list[Completion]:
    from stages.common.chat import ASSISTANT_END
    from stages.common.generate import generate
    from stages.common.prompts import chat_prompt, text_prompt

    tokenizer, seq_len = loaded.tokenizer, loaded.model.cfg.seq_len
    make, stop = (chat_prompt, tokenizer.special(ASSISTANT_END)) if chat else (text_prompt, tokenizer.bos_id)
    ids = [make(tokenizer)(prompt) for prompt in prompts]
    too_long = [i for i, p in enumerate(ids) if len(p) >= seq_len]
    if too_long:
        raise UsageError(f"prompt {too_long[0] + 1} has {len(ids[too_long[0]])} tokens; the context is {seq_len}")
    batch = [p for p in ids for _ in range(num_samples)]
    replies = generate(loaded.model, batch, sampling, stop, seed=seed)
    texts = [tokenizer.decode(t for t in reply if t < tokenizer.bos_id) for reply in replies]
    return [Completion(prompts[i // num_samples], i % num_samples, text) for i, text in enumerate(texts)]


def write(completions: list[Completion], label: str, chat: bool, as_json: bool, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up now: a test may have replaced it
    for done in completions:
        if as_json:
            record = {"model": label, "prompt": done.prompt, "sample": done.sample, "completion": done.text}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif chat:
            out.write(f"{PROMPT}{done.prompt}\n{REPLY}{done.text}\n\n")
        else:
            out.write(f"{done.prompt}{done.text}\n\n")
