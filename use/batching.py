"""Continuous batching: requests from many clients decode together through one `Decoder`.

One thread owns the model. Between two decode steps it drops the rows that are done (a stop token,
the token budget, or cancelled: the client left or a stop string matched) and admits waiting
requests into the freed places with a prefill, so a request joins the running batch as soon as
another finishes instead of waiting for the whole batch to drain. Each row samples with its own
settings and its own random generator, so a seeded request draws the same tokens whatever it shares
the batch with. At most `max_waiting` requests wait; past that `submit` refuses (`Busy`) rather than
queue without end.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from stages.common.generate import Decoder, Sampling, attention_kernels, pick


@dataclass(frozen=True)
class Job:
    """One request as the engine runs it: prompt ids and how to sample the reply."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None
    seed: int | None = None  # None: a fresh random seed
    stop_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Update:
    """What one decode step made for one request. `finish`: "stop" (then `token` is the stop token, not
    part of the reply), "length" (`token` is the reply's last), "error" (`token` is None)."""

    token: int | None
    finish: str | None = None
    error: str = ""


class Busy(RuntimeError):
    """Too many requests are already waiting."""


class Ticket:
    """A submitted job: the engine delivers its updates through `deliver` (called on the engine's thread)."""

    def __init__(self, job: Job, deliver: Callable[[Update], None]):
        self.job = job
        self.deliver = deliver
        self.sampling = Sampling(max_new_tokens=job.max_tokens, temperature=job.temperature, top_p=job.top_p)
        self.generator: torch.Generator | None = None  # made on admission, on the model's device
        self.produced = 0
        self.cancelled = False


class Engine:
    def __init__(self, model: nn.Module, max_batch: int = 32, max_waiting: int = 256):
        if max_batch < 1 or max_waiting < 0:
            raise ValueError(f"max_batch must be >= 1 and max_waiting >= 0, got {max_batch} and {max_waiting}")
        self.model = model
        self.seq_len: int = model.cfg.seq_len
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.finished: Counter[str] = Counter()  # requests by how they ended: stop, length, cancelled, error
        self._decoder = Decoder(model)
        self._running: list[Ticket] = []  # one per decoder row, in row order; only the engine thread touches it
        self._waiting: deque[Ticket] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="z2h-engine", daemon=True)

    # -- the clients' side ---------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop after the current step; requests still running or waiting end with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()
        for ticket in [*self._running, *self._waiting]:
            self._end(ticket, Update(None, "error", "the server is shutting down"))
        self._running, self._waiting = [], deque()

    def submit(self, job: Job, deliver: Callable[[Update], None]) -> Ticket:
        if not job.prompt:
            raise ValueError("the prompt is empty")
        if len(job.prompt) + job.max_tokens > self.seq_len:
            raise ValueError(
                f"{len(job.prompt)} prompt + {job.max_tokens} new tokens exceed the {self.seq_len}-token context"
            )
        ticket = Ticket(job, deliver)
        with self._wake:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(ticket)
            self._wake.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop the request at the next step (a no-op once it has finished)."""
        ticket.cancelled = True

    @property
    def load(self) -> dict[str, int]:
        return {"running": len(self._running), "waiting": len(self._waiting), "max_batch": self.max_batch}

    # -- the engine's thread -----------------------------------------------------------
    def _loop(self) -> None:
        logits: torch.Tensor | None = None
        with torch.no_grad(), attention_kernels():
            while (joining := self._next_joiners()) is not None:
                try:
                    if joining:
                        logits = self._admit(joining, logits)
                    logits = self._step(logits) if self._running else None
                except Exception as exc:  # a failed forward fails the requests it carried, not the server
                    for ticket in self._running:
                        self._end(ticket, Update(None, "error", f"{type(exc).__name__}: {exc}"))
                    self._running, self._decoder, logits = [], Decoder(self.model), None

    def _next_joiners(self) -> list[Ticket] | None:
        """Waiting requests that fit in the batch now (waits while there is nothing to do); None once closed."""
        with self._wake:
            while not self._closed and not self._running and not self._waiting:
                self._wake.wait()
            if self._closed:
                return None
            joining: list[Ticket] = []
            while self._waiting and len(self._running) + len(joining) < self.max_batch:
                ticket = self._waiting.popleft()
                if ticket.cancelled:
                    self.finished["cancelled"] += 1
                else:
                    joining.append(ticket)
            return joining

    def _admit(self, joining: list[Ticket], logits: torch.Tensor | None) -> torch.Tensor:
        for ticket in joining:
            ticket.generator = torch.Generator(device=self._decoder.device)
            if ticket.job.seed is None:
                ticket.generator.seed()
            else:
                ticket.generator.manual_seed(ticket.job.seed)
        new = self._decoder.add([t.job.prompt for t in joining])
        self._running += joining
        return new if logits is None else torch.cat([logits, new])

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        chosen = logits.argmax(dim=-1)
        for row, ticket in enumerate(self._running):
            if ticket.sampling.temperature > 0:  # alone, with its own generator: companions never shift its draws
                chosen[row] = pick(logits[row : row + 1], ticket.sampling, ticket.generator)[0]
        return chosen

    def _step(self, logits: torch.Tensor) -> torch.Tensor | None:
        chosen = self._pick(logits)
        going = []
        for ticket, token in zip(self._running, chosen.tolist(), strict=True):
            ticket.produced += 1
            if ticket.cancelled:
                self.finished["cancelled"] += 1
                going.append(False)
                continue
            finish = "stop" if token in ticket.job.stop_ids else None
            if finish is None and ticket.produced == ticket.job.max_tokens:
                finish = "length"
            if finish is None:
                going.append(self._send(ticket, Update(token)))
            else:
                self._end(ticket, Update(token, finish))
                going.append(False)
        if all(going):
            return self._decoder.step(chosen)
        keep = torch.tensor(going, device=chosen.device)
        self._running = [t for t, g in zip(self._running, going, strict=True) if g]
        self._decoder.keep(keep.nonzero().squeeze(-1))
        return self._decoder.step(chosen[keep]) if self._running else None

    def _send(self, ticket: Ticket, update: Update) -> bool:
        """Whether the request still listens (a client whose event loop is gone counts as cancelled)."""
        try:
            ticket.deliver(update)
            return True
        except Exception:
            self.finished["cancelled"] += 1
            return False

    def _end(self, ticket: Ticket, update: Update) -> None:
        if self._send(ticket, update):
            self.finished[update.finish or "error"] += 1
