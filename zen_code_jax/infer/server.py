"""OpenAI-compatible completions server (FastAPI + uvicorn) for IDEs and scripts.

Endpoints: `POST /v1/completions`, `POST /infill` (llama.cpp), `POST /v1/cancel`
(`{"id": "cmpl-..."}`), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus).
`/v1/chat/completions` answers a 404 that says to use completions.

The HTTP application (`server_http.py`) validates requests (`schemas.py`, then
`protocol.RequestParser`), hands the rows to the one scheduler thread
(`scheduler.Scheduler`, continuous batching on fixed slots) and relays its events: as
server-sent events when `stream` is set (one event per released piece of text, then the
usage chunk if asked, then `data: [DONE]`), or as one JSON body. uvicorn serves it on its
own thread and event loop (`transport.py`). A client that disconnects, or a
`/v1/cancel`, frees its slots at the next scheduler turn.

Protection: an optional API key (`Authorization: Bearer KEY`, compared in constant time,
checked before the body is read; 401 otherwise), caps on body size (413), prompt tokens,
rows, max_tokens (400 with OpenAI's `code`), the wait queue (429 + Retry-After), a
whole-request deadline (headers and body within `read_timeout_s`, else 408), at most
`max_connections` connections (503 past it) and a listen backlog of `backlog`.
"""

from __future__ import annotations

import hmac
import queue
import threading
import time
import uuid

from zen_code_jax.infer.engine import InferenceEngine
from zen_code_jax.infer.metrics import ServerMetrics
from zen_code_jax.infer.protocol import APIError, Limits, Parsed, RequestParser, parse_fim_prompt
from zen_code_jax.infer.scheduler import Job, QueueFull, Scheduler
from zen_code_jax.infer.server_http import make_app
from zen_code_jax.infer.slots import COMPILES
from zen_code_jax.infer.transport import ConnectionLimits, ThreadedServer, bind, deadline_protocol

__all__ = ["APIError", "CompletionServer", "ConnectionLimits", "parse_fim_prompt"]


class CompletionServer:
    """Serve an InferenceEngine over HTTP on `host:port` (port 0 picks a free one).

    The decoding machinery comes in: `scheduler` (which holds its slot decoder) is built
    and warmed up by the caller (`__main__.build_server`: `engine.slot_decoder`,
    `warm_up`, `engine.scheduler`), so another decoder or scheduler (a draft model for
    speculative decoding, another admission policy) needs no change here. Counting
    compilations starts now: after this, no request may compile. The socket is bound and
    listening when the constructor returns (`port` is known); `start()` serves.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        scheduler: Scheduler,
        *,
        model_name: str = "zen-code",
        host: str = "127.0.0.1",
        port: int = 8000,
        limits: Limits | None = None,
        api_key: str | None = None,
        connections: ConnectionLimits | None = None,
    ):
        """engine: prompts and tokenizer (the parser's); scheduler: decodes the rows (not
        yet started; `start()` starts it); limits: per-request caps (default: prompts up to
        the decoder's context - 1); connections: backlog, connection cap, keep-alive."""
        self.engine, self.model_name = engine, model_name
        self.scheduler = scheduler
        self.decoder = scheduler.dec
        max_len = self.decoder.max_len
        self.limits = limits or Limits(max_prompt_tokens=max_len - 1)
        self.connections = connections or ConnectionLimits()
        self.compiles_at_start = COMPILES["scheduler"]
        self.parser = RequestParser(engine, model_name, self.limits, max_len)
        self._api_key = (api_key or "").encode()
        self.created = int(time.time())
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.metrics = ServerMetrics(self._gauges, scheduler.stats)
        scheduler.on_first_token = self.metrics.ttft.observe
        c = self.connections
        self._sock = bind(host, port, c.backlog)
        protocol = deadline_protocol(
            self.limits.read_timeout_s, lambda: self.metrics.count("other", 408)
        )
        self._http = ThreadedServer(
            make_app(self),
            self._sock,
            dict(
                http=protocol,
                backlog=c.backlog,
                limit_concurrency=c.max_connections,
                timeout_keep_alive=c.keep_alive_s,
            ),
        )

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self._sock.getsockname()[0]}:{self.port}"

    @property
    def compiles_since_start(self) -> int:
        """XLA compilations after warm-up (must stay 0: no request compiles)."""
        return COMPILES["scheduler"] - self.compiles_at_start

    def start(self) -> CompletionServer:
        self.scheduler.start()
        self._http.start()
        deadline = time.monotonic() + 30
        while not self._http.server.started and time.monotonic() < deadline:
            time.sleep(0.01)  # accepting before start() returns: tests connect at once
        return self

    def serve_forever(self) -> None:
        self.start()
        try:
            while self._http.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._http.stop()
        self.scheduler.shutdown()

    def authorized(self, header: str | None) -> bool:
        if not self._api_key:
            return True
        got = (header or "").removeprefix("Bearer ").strip().encode()
        return hmac.compare_digest(got, self._api_key)

    def _gauges(self) -> dict[str, float]:
        sch = self.scheduler
        return {
            "zen_queue_depth": sch.queue_depth,
            "zen_slots_busy": sch.busy_slots,
            "zen_slots_total": self.decoder.slots,
            "zen_compilations_since_start": self.compiles_since_start,
            "zen_spec_acceptance_rate": sch.acceptance_rate,
        }

    def metrics_text(self) -> str:
        """Prometheus text exposition (what GET /metrics answers)."""
        return self.metrics.exposition().decode()

    def submit(self, parsed: Parsed, events: queue.Queue | None = None) -> tuple[str, Job]:
        """Queue a request's rows; `events` replaces the job's event queue (the HTTP app
        passes one that wakes its event loop)."""
        job = Job(parsed.requests)
        if events is not None:
            job.events = events
        try:
            self.scheduler.submit(job)
        except QueueFull as e:
            raise APIError(
                429,
                f"The server is busy ({e}); retry after a second.",
                code="rate_limit_exceeded",
                kind="rate_limit_error",
                headers={"Retry-After": "1"},
            ) from None
        cid = f"cmpl-{uuid.uuid4().hex}"
        with self._lock:
            self.jobs[cid] = job
        return cid, job

    def forget(self, cid: str) -> None:
        with self._lock:
            self.jobs.pop(cid, None)

    def cancel(self, cid: str) -> bool:
        with self._lock:
            job = self.jobs.get(cid)
        if job is None:
            return False
        job.cancel()
        self.scheduler.wake()
        return True
