"""OpenAI API request bodies -> the job the engine runs, or the OpenAI-style error a bad one earns.

Errors are `{"error": {"message", "type", "param", "code"}}` with a 4xx status, and `param` names the
field at fault. Chat messages render through z2h's chat template; every text (messages and
completion prompts) is encoded as ordinary text, so special-token strings a client sends stay text.
Both the prompt and the reply must fit the model's context: nothing is cut silently. A body is parsed
strictly (a key given twice is refused: which value was meant is a guess) and every string in it must
be usable text (no lone surrogates, which JSON's `\\ud800` escapes produce, and no NUL characters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from stages.common.chat import ConversationError, render_prompt
from stages.common.prompts import text_prompt
from stages.common.rows import BadRow, parse_json
from stages.common.text import problem, problem_in
from stages.common.tokenizer import Tokenizer
from use.batching import Job

Kind = Literal["chat", "completion"]
MAX_STOPS = 4  # OpenAI's limit on `stop` strings
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Ask:
    """A valid request: the engine's job plus what shapes the answer."""

    kind: Kind
    job: Job
    stop: tuple[str, ...]  # stop strings: the reply is cut before the first one
    stream: bool
    include_usage: bool  # streaming: send a last chunk with the token counts


def parse_body(raw: bytes) -> dict:
    try:
        body = parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if isinstance(body, BadRow):
        raise ApiError(400, f"the request body is not valid JSON: {body.detail}", code=body.reason)
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    for key, value in body.items():
        key_reason = problem(key)
        if key_reason:  # the key itself cannot be named in the answer
            raise ApiError(400, "a key of the request body is not usable text", code=key_reason)
        reason = problem_in(value)
        if reason:
            raise ApiError(400, f"{key} holds a string that is not usable text ({reason})", param=key, code=reason)
    return body


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if bad or value < low or value > high or (low_open and value == low):
        bound = "(" if low_open else "["
        raise ApiError(400, f"{key} must be a number in {bound}{low:g}, {high:g}], got {value!r}", param=key)
    return float(value)


def _integer(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"{key} must be an integer, got {value!r}", param=key)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(
            400, f"stop must be a non-empty string or a list of up to {MAX_STOPS}, got {value!r}", param="stop"
        )
    return tuple(stops)


def _content(message: object) -> object:
    """A message with its content as one string (OpenAI also sends a list of text parts)."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    parts = message["content"]
    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
        raise ApiError(400, "only text content parts are supported", param="messages", code="unsupported_content")
    return {**message, "content": "".join(p["text"] for p in parts)}


def _prompt_ids(body: dict, kind: Kind, tokenizer: Tokenizer) -> tuple[list[int], str]:
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
        try:
            return render_prompt(tokenizer, [_content(m) for m in messages]), "messages"
        except ConversationError as exc:
            raise ApiError(400, f"messages: {exc}", param="messages", code=exc.reason) from None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, f"prompt must be a string (or a list of one), got {type(prompt).__name__}", param="prompt")
    return text_prompt(tokenizer)(prompt), "prompt"


def read_request(body: dict, kind: Kind, tokenizer: Tokenizer, seq_len: int, model_id: str) -> Ask:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model is required: the id /v1/models lists", param="model")
    if model != model_id:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server serves {model_id!r}",
            param="model",
            code="model_not_found",
        )
    n = _integer(body, "n")
    if n not in (None, 1):
        raise ApiError(400, f"n must be 1 (one reply per request), got {n}", param="n")
    temperature = _number(body, "temperature", DEFAULT_TEMPERATURE, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    seed = _integer(body, "seed")
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise ApiError(400, "stream must be a boolean and stream_options an object", param="stream")
    stop = _stops(body)
    prompt, prompt_param = _prompt_ids(body, kind, tokenizer)
    if len(prompt) >= seq_len:
        raise ApiError(
            400,
            f"the prompt has {len(prompt)} tokens; this model's context is {seq_len} tokens, "
            "so no room is left for a reply",
            param=prompt_param,
            code="context_length_exceeded",
        )
    limit_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, limit_key)
    room = seq_len - len(prompt)
    if max_tokens is not None and not 1 <= max_tokens <= room:
        raise ApiError(
            400,
            f"{limit_key} must be between 1 and {room}: this model's context is {seq_len} tokens "
            f"and the prompt takes {len(prompt)}; got {max_tokens}",
            param=limit_key,
            code="context_length_exceeded" if max_tokens > room else None,
        )
    job = Job(
        prompt=prompt,
        max_tokens=max_tokens or room,
        temperature=temperature,
        top_p=top_p if top_p < 1 else None,
        seed=None if seed is None else seed % 2**64,
        stop_ids=frozenset(tokenizer.specials.values()),  # a reply is text: it ends at its first special token
    )
    return Ask(kind, job, stop, stream, bool(options.get("include_usage")))
