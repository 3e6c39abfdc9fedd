"""OpenAI-compatible completions server (stdlib http.server) for IDEs and scripts.

Endpoints: `POST /v1/completions`, `POST /infill` (llama.cpp), `POST /v1/cancel`
(`{"id": "cmpl-..."}`), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus).
`/v1/chat/completions` answers a 404 that says to use completions; every body is read
before answering, so a keep-alive connection stays usable after any error.

Handler threads (`server_http.py`) parse and validate (`protocol.RequestParser`), then
hand the rows to the one scheduler thread (`scheduler.Scheduler`, continuous batching on
fixed slots) and relay its events: as server-sent events when `stream` is set (one event
per released piece of text, then the usage chunk if asked, then `data: [DONE]`), or as one
JSON body.
A client that disconnects, or a `/v1/cancel`, frees its slots at the next scheduler turn.

Protection: an optional API key (`Authorization: Bearer KEY`, compared in constant time,
401 otherwise), caps on body size (413), prompt tokens, rows, max_tokens (400 with
OpenAI's `code`), the wait queue (429 + Retry-After), and a socket read timeout (408) so
stalled uploads do not hold threads.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from zen_code_jax.infer.engine import InferenceEngine
from zen_code_jax.infer.protocol import APIError, Limits, Parsed, RequestParser, parse_fim_prompt
from zen_code_jax.infer.scheduler import Job, QueueFull, Scheduler
from zen_code_jax.infer.server_http import make_handler
from zen_code_jax.infer.slots import COMPILES

__all__ = ["APIError", "CompletionServer", "parse_fim_prompt"]


class CompletionServer:
    """Serve an InferenceEngine over HTTP on `host:port` (port 0 picks a free one).

    The decoding machinery comes in: `scheduler` (which holds its slot decoder) is built
    and warmed up by the caller (`__main__.build_server`: `engine.slot_decoder`,
    `warm_up`, `engine.scheduler`), so another decoder or scheduler (a draft model for
    speculative decoding, another admission policy) needs no change here. Counting
    compilations starts now: after this, no request may compile.
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
    ):
        """engine: prompts and tokenizer (the parser's); scheduler: decodes the rows (not
        yet started; `start()` starts it); limits: per-request caps (default: prompts up to
        the decoder's context - 1)."""
        self.engine, self.model_name = engine, model_name
        self.scheduler = scheduler
        self.decoder = scheduler.dec
        max_len = self.decoder.max_len
        self.limits = limits or Limits(max_prompt_tokens=max_len - 1)
        self.compiles_at_start = COMPILES["scheduler"]
        self.parser = RequestParser(engine, model_name, self.limits, max_len)
        self._api_key = (api_key or "").encode()
        self.created = int(time.time())
        self.jobs: dict[str, Job] = {}
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    @property
    def compiles_since_start(self) -> int:
        """XLA compilations after warm-up (must stay 0: no request compiles)."""
        return COMPILES["scheduler"] - self.compiles_at_start

    def start(self) -> CompletionServer:
        self.scheduler.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.scheduler.shutdown()

    def authorized(self, header: str | None) -> bool:
        if not self._api_key:
            return True
        got = (header or "").removeprefix("Bearer ").strip().encode()
        return hmac.compare_digest(got, self._api_key)

    def count(self, route: str, status: int) -> None:
        with self._lock:
            key = f'route="{route}",code="{status}"'
            self.requests[key] = self.requests.get(key, 0) + 1

    def metrics(self) -> str:
        """Prometheus text exposition of the server's counters and gauges."""
        sch, st = self.scheduler, self.scheduler.stats
        ttft = list(sch.ttft)
        lines = ["# TYPE zen_requests_total counter"]
        with self._lock:
            lines += [f"zen_requests_total{{{k}}} {v}" for k, v in sorted(self.requests.items())]
        gauges = {
            "zen_queue_depth": sch.queue_depth,
            "zen_slots_busy": sch.busy_slots,
            "zen_slots_total": self.decoder.slots,
            "zen_compilations_since_start": self.compiles_since_start,
        }
        for k, v in gauges.items():
            lines += [f"# TYPE {k} gauge", f"{k} {v}"]
        for k in (
            "generated_tokens",
            "prefill_tokens",
            "prefix_reused_tokens",
            "decode_steps",
            "cancelled_rows",
            "wasted_tokens",
            "rejected_queue_full",
            "spec_draft_tokens",
            "spec_accepted_tokens",
            "spec_verify_steps",
        ):
            lines += [f"# TYPE zen_{k}_total counter", f"zen_{k}_total {st[k]}"]
        lines += [
            "# TYPE zen_spec_acceptance_rate gauge",
            f"zen_spec_acceptance_rate {sch.acceptance_rate:.6f}",
        ]
        lines.append("# TYPE zen_time_to_first_token_seconds histogram")
        for le in (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0):
            lines.append(
                f'zen_time_to_first_token_seconds_bucket{{le="{le}"}} {sum(t <= le for t in ttft)}'
            )
        lines.append(f'zen_time_to_first_token_seconds_bucket{{le="+Inf"}} {len(ttft)}')
        lines.append(f"zen_time_to_first_token_seconds_sum {sum(ttft):.6f}")
        lines.append(f"zen_time_to_first_token_seconds_count {len(ttft)}")
        return "\n".join(lines) + "\n"

    def submit(self, parsed: Parsed, alive: Callable[[], bool] | None = None) -> tuple[str, Job]:
        job = Job(parsed.requests, alive)
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
