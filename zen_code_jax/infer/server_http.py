"""The completions server's HTTP application (FastAPI on Starlette): routes, auth, SSE.

`make_app(server)` builds the ASGI app that `CompletionServer` (`server.py`) serves with
uvicorn (`transport.py`). A request goes through:

1. `_Gate` (pure ASGI, before any route): the path without its trailing slash, the API
   key checked from the headers alone (401 before a byte of the body is read, so an
   unauthenticated client cannot make the server buffer or parse anything), a declared
   body over the cap refused (413, connection closed), and every reply counted in
   `/metrics` under a fixed route label.
2. The route: the body read with a running size cap (chunked uploads too), parsed and
   type-checked by `schemas.parse_body` (400, never 422 or 500), turned into rows by
   `protocol.RequestParser` on a worker thread (tokenizing a long prompt must not stall
   the event loop), submitted to the scheduler thread.
3. The relay: the scheduler thread hands each event to the loop
   (`loop.call_soon_threadsafe`, `LoopQueue`), and the route answers with one JSON body
   or server-sent events (Starlette's `StreamingResponse`; `data: [DONE]` last). A client
   that disconnects cancels its job (its slots are free at the next scheduler turn):
   streaming through Starlette's disconnect listener, whole replies through a watcher on
   the ASGI `receive` channel.

Why its own module: the server object owns state (scheduler, jobs, metrics, limits); this
module owns the wire format and reads that state only through `HandlerServer`, so it never
imports `server.py` (the import runs one way, server -> server_http).
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zen_code_jax.infer.metrics import ServerMetrics
from zen_code_jax.infer.protocol import APIError, Limits, Parsed, RequestParser
from zen_code_jax.infer.responses import (
    dumps,
    infill_obj,
    logprobs_obj,
    prompt_logprobs_obj,
    select_fields,
    usage,
)
from zen_code_jax.infer.scheduler import Event, Job, Scheduler
from zen_code_jax.infer.schemas import (
    CancelBody,
    Choice,
    Completion,
    CompletionBody,
    Health,
    InfillBody,
    ModelCard,
    ModelList,
    parse_body,
)
from zen_code_jax.infer.slots import SlotDecoder
from zen_code_jax.infer.transport import EOF_IS_DISCONNECT, GOT_EOF

OPEN_ROUTES = frozenset({"/health"})  # everything else needs the API key (when one is set)


class HandlerServer(Protocol):
    """What the app reads and calls on its server (`server.CompletionServer`)."""

    engine: Any  # its tokenizer detokenizes logprob records
    model_name: str
    created: int
    limits: Limits
    parser: RequestParser
    scheduler: Scheduler
    decoder: SlotDecoder
    metrics: ServerMetrics

    def authorized(self, header: str | None) -> bool: ...
    def submit(self, parsed: Parsed, events: queue.Queue | None = None) -> tuple[str, Job]: ...
    def forget(self, cid: str) -> None: ...
    def cancel(self, cid: str) -> bool: ...


class JSON(Response):
    """Compact JSON (llama.cpp's spelling; llama.vim matches `"content"\\s*:"`)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def error_response(e: APIError) -> Response:
    return JSON(e.body(), e.status, headers=e.headers)


class Gone(Response):
    """The client went away (or its request timed out, answered 408 by the transport):
    send nothing."""

    def __init__(self) -> None:
        super().__init__(status_code=499)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


class LoopQueue(queue.Queue):
    """A job's event queue whose `put` (on the scheduler thread) hands each event to the
    event loop's asyncio queue: the thread never blocks and the loop never polls."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.loop, self.aq = loop, asyncio.Queue[Event]()

    def put(self, item: Event, block: bool = True, timeout: float | None = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.aq.put_nowait, item)
        except RuntimeError:  # the loop has closed (server shutting down): nobody listens
            pass


class _Gate:
    """Path normalization, auth before the body, declared-size cap, request counting."""

    def __init__(self, app: ASGIApp, server: HandlerServer):
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        scope = {**scope, "path": path}

        async def counted(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                self.server.metrics.count(path, msg["status"])
            await send(msg)

        headers = Headers(scope=scope)
        try:
            if path not in OPEN_ROUTES and not self.server.authorized(headers.get("authorization")):
                raise APIError(
                    401,
                    "Invalid or missing API key; send `Authorization: Bearer <key>` with the "
                    "key the server was started with (--api_key or ZEN_API_KEY).",
                    code="invalid_api_key",
                    kind="authentication_error",
                )
            declared = headers.get("content-length")
            if declared is not None:
                if not declared.isdigit():
                    raise APIError(400, "Bad Content-Length header; send the body's byte count.")
                _check_size(int(declared), self.server.limits.max_body_bytes)
        except APIError as e:
            await error_response(e)(scope, receive, counted)
            return
        await self.app(scope, receive, counted)


def _check_size(n: int, limit: int) -> None:
    if n > limit:
        raise APIError(
            413,
            f"The request body has {n} bytes or more, more than this server's limit of "
            f"{limit}; send less context.",
            code="request_too_large",
            headers={"Connection": "close"},  # the rest of the body is not read
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body (Content-Length or chunked), refused past `limit` bytes."""
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        _check_size(n, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def job_events(job: Job, q: LoopQueue) -> AsyncIterator[Event]:
    """A job's events until each row has finished. Rows cancelled before they reached a
    slot get no event from the scheduler: they end here as "cancelled"."""
    left = {i for i in range(len(job.rows))}
    get: asyncio.Task | None = None
    try:
        while left:
            get = get or asyncio.ensure_future(q.aq.get())
            done, _ = await asyncio.wait({get}, timeout=0.5)
            if not done:
                if job.cancelled.is_set():
                    for i in sorted(left):
                        r = job.rows[i]
                        if r.finish_reason is None and r.t_admitted == 0.0:
                            left.discard(i)
                            yield Event(i, "", [], "cancelled")
                continue
            ev, get = get.result(), None
            if ev.finish_reason is not None:
                left.discard(ev.row)
            yield ev
    finally:
        if get is not None:
            get.cancel()


def make_app(server: HandlerServer) -> ASGIApp:
    """The ASGI application of one server."""
    tok = server.engine.tokenizer
    app = FastAPI(title="zen-code-jax completions", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> Response:
        return error_response(e)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: ClientDisconnect) -> Response:
        return Gone()

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> Response:  # a bug: say so, as JSON
        return error_response(APIError(500, f"{type(e).__name__}: {e}", kind="server_error"))

    @app.get("/health")
    async def health() -> Response:
        sch, dec = server.scheduler, server.decoder
        return JSON(
            Health(
                model=server.model_name,
                slots=dec.slots,
                busy_slots=sch.busy_slots,
                context_length=dec.max_len,
                repo_prefix_tokens=server.engine.repo_format.prefix.reserve,
            ).model_dump()
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> Response:
        card = ModelCard(id=server.model_name, created=server.created)
        return JSON(ModelList(data=[card]).model_dump())

    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions(request: Request) -> Response:
        body = parse_body(CompletionBody, await read_body(request, server.limits.max_body_bytes))
        parsed = await run_in_threadpool(server.parser.completion, body)
        return await serve(request, parsed, infill=False)

    @app.post("/infill")
    async def infill(request: Request) -> Response:
        body = parse_body(InfillBody, await read_body(request, server.limits.max_body_bytes))
        parsed = await run_in_threadpool(server.parser.infill, body)
        return await serve(request, parsed, infill=True)

    @app.post("/v1/cancel")
    async def cancel(request: Request) -> Response:
        body = parse_body(CancelBody, await read_body(request, server.limits.max_body_bytes))
        return JSON({"id": body["id"], "cancelled": server.cancel(body["id"])})

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat() -> Response:
        raise APIError(
            404,
            "This server has no chat endpoint: it serves a code-completion model. Use POST "
            "/v1/completions (in Continue: a tabAutocompleteModel with "
            "useLegacyCompletionsEndpoint; see docs/serving.md).",
            code="not_found",
            kind="not_found_error",
        )

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    async def no_route(request: Request) -> Response:
        raise APIError(
            404,
            f"No route {request.method} {request.url.path}; use POST /v1/completions or "
            "/infill, GET /health, /metrics or /v1/models.",
            code="not_found",
            kind="not_found_error",
        )

    async def serve(request: Request, parsed: Parsed, *, infill: bool) -> Response:
        if parsed.opts["stream"]:
            setattr(request.state, EOF_IS_DISCONNECT, True)
            if getattr(request.state, GOT_EOF, False):  # closed while we parsed: cancelled
                raise APIError(
                    400,
                    "The client closed its side before the stream started; an EOF on a "
                    "stream is its cancel (send stream: false to half-close and wait).",
                    code="client_closed",
                    headers={"Connection": "close"},
                )
        q = LoopQueue(asyncio.get_running_loop())
        cid, job = server.submit(parsed, q)
        if parsed.opts["stream"]:
            return StreamingResponse(
                _released(cid, job, sse(cid, job, q, parsed, infill)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        watcher = asyncio.ensure_future(_watch_disconnect(request, job))
        try:
            texts, recs = ["" for _ in job.rows], [[] for _ in job.rows]
            async for ev in job_events(job, q):
                texts[ev.row] += ev.text
                recs[ev.row] += ev.logprobs
        finally:
            watcher.cancel()
            _release(cid, job)
        return JSON(whole(cid, job, parsed, infill, texts, recs))

    async def _watch_disconnect(request: Request, job: Job) -> None:
        """The body has been read: the next ASGI message is the client's disconnect."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()
        server.scheduler.wake()

    def _release(cid: str, job: Job) -> None:
        if not job.finished:
            job.cancel()
            server.scheduler.wake()
        server.forget(cid)

    async def _released(cid: str, job: Job, it: AsyncIterator[str]) -> AsyncIterator[str]:
        """`it`, and the job cancelled however it ends (a disconnect cancels the stream)."""
        try:
            async for s in it:
                yield s
        finally:
            _release(cid, job)

    def whole(cid: str, job: Job, parsed: Parsed, infill: bool, texts: list, recs: list) -> dict:
        rows, o = job.rows, parsed.opts
        if infill:
            obj = infill_obj(rows[0], texts[0], server.model_name, server.decoder.max_len)
            return select_fields(obj.model_dump(), o.get("response_fields"))
        choices = []
        for i, r in enumerate(rows):
            head = parsed.echo_texts[i // o["n"]] if o["echo"] else ""
            lp = None
            if o["logprobs"] is not None:
                lp = logprobs_obj(tok, recs[i][: r.kept_tokens], o["logprobs"], len(head))
                if o["echo"]:
                    lp = prompt_logprobs_obj(tok, r, o["logprobs"], lp)
            choices.append(
                Choice(text=head + texts[i], index=i, logprobs=lp, finish_reason=r.finish_reason)
            )
        out = Completion(
            id=cid,
            created=int(time.time()),
            model=server.model_name,
            choices=choices,
            usage=usage(rows),
        )
        return out.model_dump()

    async def sse(
        cid: str, job: Job, q: LoopQueue, parsed: Parsed, infill: bool
    ) -> AsyncIterator[str]:
        o, created = parsed.opts, int(time.time())
        offsets = [0] * len(job.rows)

        def chunk(choices: list[Choice], **kw: Any) -> str:
            c = Completion(id=cid, created=created, model=server.model_name, choices=choices, **kw)
            return f"data: {c.model_dump_json()}\n\n"

        if o.get("echo"):
            for i in range(len(job.rows)):
                yield chunk([Choice(text=parsed.echo_texts[i // o["n"]], index=i)])
        async for ev in job_events(job, q):
            if not ev.text and ev.finish_reason is None and not ev.logprobs:
                continue
            if infill:
                msg: Any = {"content": ev.text, "stop": False}
                if ev.finish_reason:
                    r = job.rows[0]
                    msg = infill_obj(r, ev.text, server.model_name, server.decoder.max_len)
                    msg = msg.model_dump()
                yield f"data: {dumps(msg)}\n\n"
                continue
            lp = None
            if o["logprobs"] is not None and ev.logprobs:
                lp = logprobs_obj(tok, ev.logprobs, o["logprobs"], offsets[ev.row])
            offsets[ev.row] += len(ev.text)
            yield chunk(
                [Choice(text=ev.text, index=ev.row, logprobs=lp, finish_reason=ev.finish_reason)]
            )
        if not infill and o.get("include_usage"):
            yield chunk([], usage=usage(job.rows))
        if not infill:
            yield "data: [DONE]\n\n"

    return _Gate(app, server)
