"""`z2h chat`: talk to a model in the terminal.

The whole conversation stays in the chat template and each reply streams token by token from the
shared engine (`stages.common.generate.stream`). When the conversation outgrows the model's context,
the oldest exchanges are dropped (and you are told). `/reset` starts over, `/quit` (or Ctrl-D) leaves;
Ctrl-C stops a reply that is being written, or leaves at the prompt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TextIO

from use.decode import TextStream
from use.loading import Loaded

PROMPT = "you> "
REPLY = "model> "
HELP = "/reset clears the conversation, /quit leaves (so does Ctrl-D)"


@dataclass
class Conversation:
    """The turns so far, rendered with the chat template, kept within the model's context."""

    tokenizer: object
    seq_len: int
    min_reply: int = 32  # tokens always left for the reply
    messages: list[dict[str, str]] = field(default_factory=list)

    def prompt(self, text: str) -> tuple[list[int], list[str]]:
        """Ids for the conversation plus the user's new message, and notes on what was dropped or cut.
        A ValueError says why the message cannot be sent."""
        from stages.common.chat import render_prompt
        from stages.common.prompts import TooLong, chat_prompt, fit_text
        from stages.common.text import problem

        reason = problem(text)  # undecodable terminal bytes arrive as lone surrogates, which tokenizing would mangle
        if reason:
            raise ValueError(f"this message cannot be used as text ({reason}); nothing was sent")
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


def start_threads(loaded: Loaded) -> None:
    """Run what starts the model's helper threads while SIGINT is held: a forward pass and an op big
    enough for the intra-op pool."""
    import torch

    device = next(loaded.model.parameters()).device
    with torch.no_grad():
        loaded.model(torch.zeros(1, 1, dtype=torch.long, device=device))
        (torch.ones(1 << 16, device=device) * 2).sum()


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
        except UnicodeDecodeError as exc:  # a strict terminal encoding refused the line's bytes
            out.write(f"[that line is not {exc.encoding} text ({exc.reason}); nothing was sent]\n")
            out.flush()
            continue
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
