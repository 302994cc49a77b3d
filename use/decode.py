"""Token ids to text as they stream out of the model."""

from __future__ import annotations

import codecs


class TextStream:
    """Token ids in, text out, without splitting a UTF-8 character that spans two tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.decoder.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)
