"""A reply's tokens -> its text, piece by piece, cut before the first stop string.

Text that might still be the start of a stop string is held back until the next token settles it,
so a streaming client never receives part of a stop string."""

from __future__ import annotations

from collections.abc import Sequence

from use.decode import TextStream


class ReplyText:
    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.decoder = TextStream(tokenizer)
        self.stops = tuple(stops)
        self.held = ""
        self.stopped = False  # a stop string appeared: nothing more is released

    def push(self, token: int) -> str:
        return self._release(self.decoder.push(token), final=False)

    def flush(self) -> str:
        """The rest, once the reply has ended."""
        return self._release(self.decoder.flush(), final=True)

    def _release(self, piece: str, final: bool) -> str:
        if self.stopped:
            return ""
        text = self.held + piece
        found = [text.find(stop) for stop in self.stops if stop in text]
        if found:
            self.stopped, self.held = True, ""
            return text[: min(found)]
        hold = 0 if final else max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]
