"""`z2h serve`: a model behind the OpenAI API, with a chat page.

Routes: `GET /` (the chat page), `GET /health`, and under `/v1` (an API key, when set, is required as
`Authorization: Bearer KEY`): `GET /models`, `POST /chat/completions`, `POST /completions`, each
answering whole or streaming server-sent events (`data: {chunk}` ... `data: [DONE]`). Requests go
to one continuous-batching `Engine` (use/batching.py); the event loop only parses, encodes and
formats, so many clients stream at once. A client that leaves mid-stream has its row dropped.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from use.api_request import ApiError, Ask, Kind, parse_body, read_request
from use.batching import Busy, Engine, Update
from use.reply_text import ReplyText

PAGE = Path(__file__).parent / "static" / "chat.html"


class Reply:
    """One request's generation as the event loop sees it: text pieces as the engine makes tokens."""

    def __init__(self, engine: Engine, ask: Ask, tokenizer):
        self.engine, self.ask = engine, ask
        self.text = ReplyText(tokenizer, ask.stop)
        self.completion_tokens = 0
        self.finish: str | None = None
        self.updates: asyncio.Queue[Update] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        try:
            self.ticket = engine.submit(
                ask.job, lambda update: loop.call_soon_threadsafe(self.updates.put_nowait, update)
            )
        except Busy as exc:
            raise ApiError(
                429, f"the server is busy ({exc}); retry later", kind="rate_limit_error", code="queue_full"
            ) from None

    @property
    def usage(self) -> dict[str, int]:
        prompt = len(self.ask.job.prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
        }

    async def pieces(self) -> AsyncIterator[str]:
        """Text as it is made; `finish` is set when it ends. Leaving early (a client gone) cancels the row."""
        try:
            while self.finish is None:
                update = await self.updates.get()
                if update.finish == "error":
                    raise ApiError(500, f"generation failed: {update.error}", kind="server_error")
                self.completion_tokens += 1
                piece = "" if update.finish == "stop" else self.text.push(update.token)
                if update.finish:
                    self.finish, piece = update.finish, piece + self.text.flush()
                if self.text.stopped:  # a stop string: the rest of the reply is not wanted
                    self.finish = "stop"
                if piece:
                    yield piece
        finally:
            self.engine.cancel(self.ticket)


def _chunk(reply: Reply, ident: str, model: str, piece: str | None, finish: str | None, first: bool) -> dict:
    if reply.ask.kind == "chat":
        delta = ({"role": "assistant"} if first else {}) | ({"content": piece} if piece is not None else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {"id": ident, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(reply: Reply, ident: str, model: str) -> AsyncIterator[str]:
    yield _sse(_chunk(reply, ident, model, "", None, first=True))
    try:
        async with aclosing(reply.pieces()) as pieces:  # closing this stream (a client gone) cancels the row
            async for piece in pieces:
                yield _sse(_chunk(reply, ident, model, piece, None, first=False))
    except ApiError as exc:  # the status line is gone: the error travels as an event
        yield _sse(exc.body)
        return
    yield _sse(_chunk(reply, ident, model, None, reply.finish, first=False))
    if reply.ask.include_usage:
        yield _sse(_chunk(reply, ident, model, None, None, first=False) | {"choices": [], "usage": reply.usage})
    yield _sse("[DONE]")


async def _whole(reply: Reply, ident: str, model: str) -> dict:
    text = "".join([piece async for piece in reply.pieces()])
    if reply.ask.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        kind = "chat.completion"
    else:
        choice, kind = {"index": 0, "text": text, "logprobs": None}, "text_completion"
    choice["finish_reason"] = reply.finish
    return {
        "id": ident,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": reply.usage,
    }


def create_app(engine: Engine, tokenizer, model_id: str, api_key: str | None = None) -> FastAPI:
    """The app around an engine; the app starts and closes the engine with itself."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="z2h serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            raise ApiError(401, "no API key: send the header Authorization: Bearer KEY", code="invalid_api_key")
        if not hmac.compare_digest(given.removeprefix("Bearer ").strip().encode(), api_key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    api = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])

    @api.get("/models")
    async def models() -> dict:
        card = {"id": model_id, "object": "model", "created": created, "owned_by": "z2h"}
        return {"object": "list", "data": [card]}

    async def answer(request: Request, kind: Kind):
        ask = read_request(parse_body(await request.body()), kind, tokenizer, engine.seq_len, model_id)
        reply = Reply(engine, ask, tokenizer)
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        if ask.stream:
            return StreamingResponse(
                _stream(reply, ident, model_id), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await _whole(reply, ident, model_id)

    @api.post("/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, "chat")

    @api.post("/completions")
    async def completions(request: Request):
        return await answer(request, "completion")

    app.include_router(api)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id, **engine.load, "finished": dict(engine.finished)}

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body, status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        body = ApiError(exc.status_code, message).body
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    return app


@contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` on a background thread (port 0: any free port) and yield its base URL; for tests and
    benchmarks, which talk to it from the same process."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="z2h-serve", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join()


def model_id(loaded) -> str:
    """The name clients pass as `model`: `stage/fingerprint` for a store model, the folder's name for a folder."""
    first = loaded.label.split(" ")[0]
    if loaded.stage and first.startswith(f"{loaded.stage}/"):
        return first
    folder = Path(loaded.label)
    if folder.exists():
        return folder.parent.name if folder.name == "model" else folder.name
    return loaded.stage or "z2h"


def serve(loaded, host: str, port: int, api_key: str | None, max_batch: int, max_waiting: int) -> int:
    """`z2h serve`: answer on host:port until interrupted."""
    import socket
    import sys

    import uvicorn

    from pipeline.errors import UsageError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from None
    name, bound = model_id(loaded), sock.getsockname()[1]
    engine = Engine(loaded.model, max_batch=max_batch, max_waiting=max_waiting)
    app = create_app(engine, loaded.tokenizer, name, api_key)
    shown = f"[{host}]" if ":" in host else host
    print(f"z2h serve: {loaded.label} as model {name!r} on http://{shown}:{bound} (chat page at /, API at /v1)")
    print(f"continuous batching: up to {max_batch} requests at once, {max_waiting} waiting; Ctrl-C stops", flush=True)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: {host} without an API key: anyone who reaches this port can use the model "
            "(--api-key KEY or $Z2H_API_KEY)",
            file=sys.stderr,
            flush=True,
        )
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0
