"""The completions server's HTTP request handler: routing, body limits, auth, SSE relay.

`make_handler(server)` builds the `BaseHTTPRequestHandler` class that `CompletionServer`
(`server.py`) gives to its `ThreadingHTTPServer`. A handler thread reads and validates a
request, submits it to the server's scheduler and relays the job's events, as server-sent
events or one JSON body (the protocol is in `server.py`'s docstring).

Why its own module: the server object owns state (scheduler, jobs, counters, limits); the
handler owns one request's wire format, and reads that state only through `server`, typed
by the `HandlerServer` protocol (so this module never imports `server.py`: the import runs
one way, server -> server_http).
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from zen_code_jax.infer.protocol import APIError, Limits, Parsed, RequestParser
from zen_code_jax.infer.scheduler import Job, Scheduler
from zen_code_jax.infer.slots import SlotDecoder


class HandlerServer(Protocol):
    """What a request handler reads and calls on its server (`server.CompletionServer`)."""

    engine: Any  # its tokenizer detokenizes logprob records
    model_name: str
    created: int
    limits: Limits
    parser: RequestParser
    scheduler: Scheduler
    decoder: SlotDecoder

    def authorized(self, header: str | None) -> bool: ...
    def count(self, route: str, status: int) -> None: ...
    def metrics(self) -> str: ...
    def submit(
        self, parsed: Parsed, alive: Callable[[], bool] | None = None
    ) -> tuple[str, Job]: ...
    def forget(self, cid: str) -> None: ...
    def cancel(self, cid: str) -> bool: ...


def _logprobs_obj(tok: Any, recs: list, k: int, offset: int) -> dict:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, offsets."""
    tokens, lps, tops, offs = [], [], [], []
    for tid, lp, top_ids, top_lps in recs:
        s = tok.decode([tid])
        tokens.append(s)
        lps.append(lp)
        tops.append({tok.decode([t]): v for t, v in list(zip(top_ids, top_lps))[:k]})
        offs.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


def _prompt_logprobs_obj(tok: Any, row: Any, k: int, completion: dict) -> dict:
    """Echo with logprobs (OpenAI's legacy scoring call, e.g. lm-evaluation-harness with
    max_tokens=0): the prompt's tokens first, the first one without a log-probability,
    then the completion's. Offsets follow the decoded prompt tokens (for a FIM or
    repository prompt: the layout the model saw, not the echoed text)."""
    first = row.prompt_ids[0]
    head = _logprobs_obj(tok, [(first, None, [], [])] + row.prompt_records, k, 0)
    head["top_logprobs"][0] = None
    shift = sum(len(t) for t in head["tokens"]) - (completion["text_offset"] or [0])[0]
    for key in ("tokens", "token_logprobs", "top_logprobs"):
        head[key] += completion[key]
    head["text_offset"] += [o + shift for o in completion["text_offset"]]
    return head


def dumps(obj: Any) -> str:
    """Compact JSON (no spaces after separators), llama.cpp's spelling: llama.vim accepts an
    /infill reply only if it matches `"content"\\s*:"`."""
    return json.dumps(obj, separators=(",", ":"))


def _rate(n: int, ms: float) -> tuple[float, float]:
    """(ms per token, tokens per second), 0 where undefined."""
    return (ms / n if n else 0.0), (1000.0 * n / ms if ms > 0 else 0.0)


def infill_obj(row: Any, content: str, model: str, max_len: int) -> dict:
    """llama.cpp's /infill reply for a finished row (the fields llama.vim and llama.vscode
    read): generated `tokens`, `timings`, `stop_type` ("eos", "word", "limit"),
    `stopping_word`, `truncated` (prompt + generated reached the context) and
    `tokens_cached` (prompt tokens reused from a slot's cache)."""
    prompt_n = len(row.prompt_ids) - row.reused
    prompt_ms = max(0.0, row.t_prompt_done - row.t_admitted) * 1000 if row.t_prompt_done else 0.0
    predicted_n = len(row.ids)
    predicted_ms = max(0.0, row.t_done - row.t_prompt_done) * 1000 if row.t_prompt_done else 0.0
    p_tok, p_sec = _rate(prompt_n, prompt_ms)
    g_tok, g_sec = _rate(predicted_n, predicted_ms)
    return {
        "content": content,
        "tokens": row.ids[: row.kept_tokens],
        "stop": True,
        "model": model,
        "tokens_predicted": row.kept_tokens,
        "tokens_evaluated": len(row.prompt_ids),
        "tokens_cached": row.reused,
        "truncated": len(row.prompt_ids) + len(row.ids) >= max_len,
        "stop_type": row.stop_type or "limit",
        "stopping_word": row.stop_word,
        "timings": {
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": p_tok,
            "prompt_per_second": p_sec,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": g_tok,
            "predicted_per_second": g_sec,
        },
    }


def select_fields(obj: dict, fields: list[str] | None) -> dict:
    """llama.cpp's `response_fields`: only the named paths ("timings/prompt_n"), each under
    its path as the key (llama.vim reads `timings/prompt_n` at the top level); paths that
    name nothing are left out. None: the whole object."""
    if fields is None:
        return obj
    out = {}
    for path in fields:
        v: Any = obj
        for part in path.split("/"):
            if not isinstance(v, dict) or part not in v:
                break
            v = v[part]
        else:
            if path:
                out[path] = v
    return out


def make_handler(server: HandlerServer) -> type[BaseHTTPRequestHandler]:
    """The handler class of one server (each handler thread reads `server`)."""
    tok = server.engine.tokenizer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = server.limits.read_timeout_s  # socket timeout: stalled uploads end (408)

        def log_message(self, format: str, *args: Any) -> None:
            if os.environ.get("ZEN_SERVER_LOG"):
                super().log_message(format, *args)

        def _send(self, code: int, data: bytes, ctype: str, headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            server.count(self.path.split("?")[0], code)

        def _json(self, code: int, obj: dict, headers: dict | None = None) -> None:
            self._send(code, dumps(obj).encode(), "application/json", headers)

        def _error(self, e: APIError) -> None:
            self._json(e.status, e.body(), e.headers)

        def _read_body(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            limit = server.limits.max_body_bytes
            if length > limit:
                self.close_connection = True  # the body is not read: the connection is spent
                raise APIError(
                    413,
                    f"The request body has {length} bytes, more than this server's limit of "
                    f"{limit}; send less context.",
                    code="request_too_large",
                )
            if length < 0:
                self.close_connection = True
                raise APIError(400, "Bad Content-Length header; send the body's byte count.")
            try:
                raw = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
                raise APIError(
                    408,
                    f"The request body did not arrive within {server.limits.read_timeout_s:g} s.",
                    code="request_timeout",
                ) from None
            if len(raw) < length:
                self.close_connection = True
                raise APIError(400, "The connection closed before the whole body arrived.")
            if length == 0:
                return None
            try:
                return json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise APIError(
                    400,
                    f"The request body is not valid JSON ({e}); send a JSON object such as "
                    '{"prompt": "def f():", "max_tokens": 16}.',
                    code="invalid_json",
                ) from None

        def _auth(self) -> None:
            if not server.authorized(self.headers.get("Authorization")):
                raise APIError(
                    401,
                    "Invalid or missing API key; send `Authorization: Bearer <key>` with the key "
                    "the server was started with (--api_key or ZEN_API_KEY).",
                    code="invalid_api_key",
                    kind="authentication_error",
                )

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            path = self.path.split("?")[0].rstrip("/")
            try:
                if path == "/health":
                    self._json(
                        200,
                        {
                            "status": "ok",
                            "model": server.model_name,
                            "slots": server.decoder.slots,
                            "busy_slots": server.scheduler.busy_slots,
                            "context_length": server.decoder.max_len,
                        },
                    )
                    return
                self._auth()
                if path == "/metrics":
                    self._send(200, server.metrics().encode(), "text/plain; version=0.0.4")
                elif path == "/v1/models":
                    self._json(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {
                                    "id": server.model_name,
                                    "object": "model",
                                    "created": server.created,
                                    "owned_by": "zen-code-jax",
                                }
                            ],
                        },
                    )
                else:
                    raise APIError(
                        404,
                        f"No route GET {path}; use GET /health, /metrics or /v1/models.",
                        code="not_found",
                        kind="not_found_error",
                    )
            except APIError as e:
                self._error(e)

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            try:
                body = self._read_body()  # always read: keep-alive stays in sync
                self._auth()
                if path in ("/v1/completions", "/completions"):
                    self._serve(server.parser.completion(body), infill=False)
                elif path == "/infill":
                    self._serve(server.parser.infill(body), infill=True)
                elif path == "/v1/cancel":
                    cid = body.get("id") if isinstance(body, dict) else None
                    self._json(200, {"id": cid, "cancelled": server.cancel(str(cid))})
                elif path in ("/v1/chat/completions", "/chat/completions"):
                    raise APIError(
                        404,
                        "This server has no chat endpoint: it serves a code-completion model. "
                        "Use POST /v1/completions (in Continue: a tabAutocompleteModel with "
                        "useLegacyCompletionsEndpoint; see docs/serving.md).",
                        code="not_found",
                        kind="not_found_error",
                    )
                else:
                    raise APIError(
                        404,
                        f"No route POST {path}; use POST /v1/completions or /infill.",
                        code="not_found",
                        kind="not_found_error",
                    )
            except APIError as e:
                self._error(e)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except Exception as e:  # a bug: say so instead of dropping the connection
                self._json(
                    500, APIError(500, f"{type(e).__name__}: {e}", kind="server_error").body()
                )

        # ---------------------------------------------------------------- decoding
        def _alive(self) -> bool:
            """False once the client closed its side (the scheduler polls it every turn)."""
            try:
                r, _, _ = select.select([self.connection], [], [], 0)
                return not (r and self.connection.recv(1, socket.MSG_PEEK) == b"")
            except OSError:
                return False

        def _gone(self) -> bool:
            return not self._alive()

        def _events(self, job: Job):
            while not job.finished:
                try:
                    ev = job.events.get(timeout=0.05)
                except Exception:  # queue.Empty
                    ev = None
                if self._gone():
                    job.cancel()
                    server.scheduler.wake()
                    raise BrokenPipeError("client went away")
                if ev is not None:
                    yield ev
            while not job.events.empty():
                yield job.events.get()

        def _serve(self, parsed: Parsed, *, infill: bool) -> None:
            cid, job = server.submit(parsed, self._alive)
            try:
                if parsed.opts["stream"]:
                    self._stream(cid, job, parsed, infill)
                else:
                    self._whole(cid, job, parsed, infill)
            finally:
                if not job.finished:
                    job.cancel()
                    server.scheduler.wake()
                server.forget(cid)

        def _usage(self, job: Job) -> dict:
            p = sum(len(r.prompt_ids) for r in job.rows)
            c = sum(r.kept_tokens for r in job.rows)
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

        def _whole(self, cid: str, job: Job, parsed: Parsed, infill: bool) -> None:
            texts = ["" for _ in job.rows]
            recs: list[list] = [[] for _ in job.rows]
            for ev in self._events(job):
                texts[ev.row] += ev.text
                recs[ev.row] += ev.logprobs
            rows = job.rows
            if infill:
                r = rows[0]
                obj = infill_obj(r, texts[0], server.model_name, server.decoder.max_len)
                self._json(200, select_fields(obj, parsed.opts.get("response_fields")))
                return
            o, choices = parsed.opts, []
            for i, r in enumerate(rows):
                head = parsed.echo_texts[i // o["n"]] if o["echo"] else ""
                lp = None
                if o["logprobs"] is not None:
                    lp = _logprobs_obj(tok, recs[i][: r.kept_tokens], o["logprobs"], len(head))
                    if o["echo"]:
                        lp = _prompt_logprobs_obj(tok, r, o["logprobs"], lp)
                choices.append(
                    {
                        "text": head + texts[i],
                        "index": i,
                        "logprobs": lp,
                        "finish_reason": r.finish_reason,
                    }
                )
            self._json(
                200,
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": server.model_name,
                    "choices": choices,
                    "usage": self._usage(job),
                },
            )

        def _stream(self, cid: str, job: Job, parsed: Parsed, infill: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            server.count(self.path.split("?")[0], 200)
            o = parsed.opts
            base = {
                "id": cid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": server.model_name,
            }
            offsets = [0] * len(job.rows)

            def send(obj: dict | str) -> None:
                data = obj if isinstance(obj, str) else dumps(obj)
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()

            if o.get("echo"):
                for i in range(len(job.rows)):
                    send(
                        {
                            **base,
                            "choices": [
                                {
                                    "text": parsed.echo_texts[i // o["n"]],
                                    "index": i,
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
            for ev in self._events(job):
                if not ev.text and ev.finish_reason is None and not ev.logprobs:
                    continue
                if infill:
                    r = job.rows[0]
                    msg = {"content": ev.text, "stop": False}
                    if ev.finish_reason:
                        msg = infill_obj(r, ev.text, server.model_name, server.decoder.max_len)
                    send(msg)
                    continue
                lp = None
                if o["logprobs"] is not None and ev.logprobs:
                    lp = _logprobs_obj(tok, ev.logprobs, o["logprobs"], offsets[ev.row])
                offsets[ev.row] += len(ev.text)
                send(
                    {
                        **base,
                        "choices": [
                            {
                                "text": ev.text,
                                "index": ev.row,
                                "logprobs": lp,
                                "finish_reason": ev.finish_reason,
                            }
                        ],
                    }
                )
            if not infill and o.get("include_usage"):
                send({**base, "choices": [], "usage": self._usage(job)})
            if not infill:
                send("[DONE]")

    return Handler
