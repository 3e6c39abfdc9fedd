"""OpenAI-compatible completions server (stdlib http.server) for IDEs and scripts.

Endpoints: `POST /v1/completions`, `GET /v1/models`, `GET /health`.

FIM. A request is an infill when it carries `suffix` (OpenAI's insert mode: prompt = prefix)
or when its prompt spells the sentinels, as in the report's example
`<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>` (the `<|fim_prefix|>` marker may
be absent, as in the repository-context listing where `# File:` blocks precede the target).
`<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}` is read as SPM. The spelled
sentinels are parsed out and the prompt is rebuilt with sentinel *ids* by the training code
(`zen_code_jax.data.fim.fim_prompt_tokens`); sentinel text is never encoded. Optional
extension field `fim_mode` ("psm" | "spm") chooses the layout for `suffix` requests.

Batching. Handler threads only parse and validate; one worker thread owns the model and
decodes every request that arrived within `batch_window_s` of the first as one batch (rows
may mix settings: each row has its own budget, temperature, top-p, seed and stop strings).
`stream: true` is answered as server-sent events once the completion is ready (one chunk per
choice, then `[DONE]`), which is what IDE plugins that always stream need.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from zen_code_jax.data.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from zen_code_jax.infer.engine import Completion, CompletionRequest, InferenceEngine

MAX_BODY_BYTES = 16 * 1024 * 1024


class RequestError(ValueError):
    """A client error: becomes HTTP 400 with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class ParsedPrompt:
    prompt_ids: list[int]
    echo_text: str  # the prompt as the user wrote it (for echo=true)


def parse_fim_prompt(prompt: str) -> tuple[str, str, str, str] | None:
    """(prefix, suffix, mode, started_middle) from a prompt spelling the FIM sentinels.

    None when the prompt has no sentinel spelling at all; RequestError when it has some but
    not the `...<|fim_suffix|>{suffix}<|fim_middle|>` skeleton.
    """
    if not any(s in prompt for s in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)):
        return None
    fmt = (
        "Spell FIM prompts as '<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>' "
        "(PSM) or '<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}' (SPM), each "
        "sentinel once, or send the prefix as `prompt` and the suffix as `suffix`."
    )
    counts = {s: prompt.count(s) for s in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}
    if counts[FIM_SUFFIX] != 1 or counts[FIM_MIDDLE] != 1 or counts[FIM_PREFIX] > 1:
        raise RequestError(f"Malformed FIM prompt (sentinel counts {counts}). {fmt}", "prompt")
    i_s, i_m = prompt.index(FIM_SUFFIX), prompt.index(FIM_MIDDLE)
    if i_m < i_s or (FIM_PREFIX in prompt and prompt.index(FIM_PREFIX) > i_s):
        raise RequestError(f"Malformed FIM prompt (sentinels out of order). {fmt}", "prompt")
    before = prompt[:i_s]
    suffix = prompt[i_s + len(FIM_SUFFIX) : i_m]
    after = prompt[i_m + len(FIM_MIDDLE) :]
    if FIM_PREFIX in before:
        if before.endswith(FIM_PREFIX) and after:  # <|fim_prefix|><|fim_suffix|>S<|fim_middle|>P
            return before[: -len(FIM_PREFIX)] + after, suffix, "spm", ""
        k = before.index(FIM_PREFIX)
        before = before[:k] + before[k + len(FIM_PREFIX) :]
    return before, suffix, "psm", after


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass
class _Job:
    rows: list[CompletionRequest]
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Completion] | None = None
    error: Exception | None = None


class CompletionServer:
    """Serve an InferenceEngine over HTTP on `host:port` (port 0 picks a free one)."""

    def __init__(
        self,
        engine: InferenceEngine,
        *,
        model_name: str = "zen-code",
        host: str = "127.0.0.1",
        port: int = 8000,
        max_tokens_limit: int = 1024,
        max_n: int = 16,
        max_batch_rows: int | None = None,
        batch_window_s: float = 0.01,
        request_timeout_s: float = 600.0,
    ):
        self.engine = engine
        self.model_name = model_name
        self.max_tokens_limit = int(max_tokens_limit)
        self.max_n = int(max_n)
        self.max_batch_rows = int(max_batch_rows or engine.max_batch_size)
        self.batch_window_s = float(batch_window_s)
        self.request_timeout_s = float(request_timeout_s)
        self.created = int(time.time())
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self.batches_run = 0  # decode batches (tests check that concurrent requests merge)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> CompletionServer:
        """Start the HTTP and worker threads; returns self."""
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True),
            threading.Thread(target=self._worker, name="decode-worker", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def serve_forever(self) -> None:
        """Blocking serve (the CLI); Ctrl-C stops it."""
        self.start()
        try:
            while all(t.is_alive() for t in self._threads):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            rows = len(job.rows)
            deadline = time.monotonic() + self.batch_window_s
            while rows < self.max_batch_rows:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                jobs.append(nxt)
                rows += len(nxt.rows)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            results = self.engine.complete([r for j in jobs for r in j.rows])
            self.batches_run += 1
            k = 0
            for j in jobs:
                j.result = results[k : k + len(j.rows)]
                k += len(j.rows)
        except Exception as e:  # isolate the failing request, answer the others
            if len(jobs) > 1:
                for j in jobs:
                    self._run([j])
                return
            jobs[0].error = e
        for j in jobs:
            j.done.set()

    def submit(self, rows: list[CompletionRequest]) -> list[Completion]:
        job = _Job(rows)
        self._queue.put(job)
        if not job.done.wait(self.request_timeout_s):
            raise TimeoutError(f"Decoding did not finish within {self.request_timeout_s:.0f} s.")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    # ------------------------------------------------------------------ requests
    def parse_request(self, body: Any) -> tuple[list[ParsedPrompt], list[CompletionRequest], dict]:
        """Validate an OpenAI completions request; returns prompts, decode rows, options."""
        if not isinstance(body, dict):
            raise RequestError(
                f"The request body must be a JSON object, got {type(body).__name__}; send "
                '{"prompt": "...", "max_tokens": 16}.'
            )
        if "prompt" not in body or body["prompt"] is None:
            raise RequestError(
                "Missing required field `prompt`; send the text to complete as a string "
                '(e.g. {"prompt": "def add(a, b):", "max_tokens": 32}).',
                "prompt",
            )
        prompt = body["prompt"]
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        else:
            raise RequestError(
                "`prompt` must be a string or a non-empty list of strings (token-id prompts are "
                "not supported); send the prompt text.",
                "prompt",
            )
        model = body.get("model", self.model_name)
        if model is not None and not isinstance(model, str):
            raise RequestError("`model` must be a string (see GET /v1/models).", "model")

        def get(name: str, default: Any, check, what: str) -> Any:
            v = body.get(name)
            if v is None:
                return default
            if not check(v):
                raise RequestError(f"`{name}` must be {what}, got {json.dumps(v)}.", name)
            return v

        max_tokens = get("max_tokens", 16, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        if max_tokens > self.max_tokens_limit:
            raise RequestError(
                f"`max_tokens`={max_tokens} exceeds this server's limit of "
                f"{self.max_tokens_limit}; lower it, or restart the server with "
                "--max_tokens_limit.",
                "max_tokens",
            )
        temperature = float(
            get("temperature", 1.0, lambda v: _is_num(v) and 0 <= v <= 2, "a number in [0, 2]")
        )
        top_p = float(get("top_p", 1.0, lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"))
        n = get(
            "n",
            1,
            lambda v: _is_int(v) and 1 <= v <= self.max_n,
            f"an integer in [1, {self.max_n}]",
        )
        seed = get("seed", None, _is_int, "an integer")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        stop = get(
            "stop",
            [],
            lambda v: (
                isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
            ),
            "a string or a list of strings",
        )
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > 16:
            raise RequestError(f"At most 16 stop strings are supported, got {len(stop)}.", "stop")
        suffix = get("suffix", None, lambda v: isinstance(v, str), "a string")
        fim_mode = get("fim_mode", "psm", lambda v: v in ("psm", "spm"), '"psm" or "spm"')
        stream = get("stream", False, lambda v: isinstance(v, bool), "true or false")
        echo = get("echo", False, lambda v: isinstance(v, bool), "true or false")
        if body.get("logprobs") is not None:
            raise RequestError(
                "`logprobs` is not supported by this server; omit it or send null.", "logprobs"
            )
        if body.get("best_of") not in (None, n):
            raise RequestError("`best_of` is not supported; omit it or set it to n.", "best_of")

        eng = self.engine
        parsed = []
        for p in prompts:
            fim = (p, suffix, fim_mode, "") if suffix is not None else parse_fim_prompt(p)
            if fim is None:
                ids = eng._encode_prompt(p)
            else:
                prefix, suf, mode, started = fim
                ids = eng.fim_prompt_ids(prefix, suf, mode)
                if started:
                    ids += eng.tokenizer.encode(started)
            limit = eng.model_cfg.max_position_embeddings
            if len(ids) + max_tokens > limit:
                raise RequestError(
                    f"The prompt has {len(ids)} tokens and max_tokens={max_tokens}: together "
                    f"more than the model's context of {limit} tokens. Shorten the prompt or "
                    "lower max_tokens.",
                    "max_tokens",
                )
            parsed.append(ParsedPrompt(ids, p))
        rows = [
            CompletionRequest(pp.prompt_ids, max_tokens, temperature, top_p, tuple(stop), seed, j)
            for pp in parsed
            for j in range(n)
        ]
        opts = {"model": model or self.model_name, "stream": stream, "echo": echo, "n": n}
        return parsed, rows, opts

    def respond(self, body: Any) -> tuple[dict, bool]:
        """The completions response object for a request body (and whether to stream)."""
        parsed, rows, opts = self.parse_request(body)
        results = self.submit(rows)
        choices = []
        for i, c in enumerate(results):
            text = c.text
            if opts["echo"]:
                text = parsed[i // opts["n"]].echo_text + text
            choices.append(
                {"text": text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
            )
        prompt_tokens = sum(len(p.prompt_ids) for p in parsed)
        completion_tokens = sum(c.completion_tokens for c in results)
        resp = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": opts["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return resp, opts["stream"]


def _error(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _make_handler(server: CompletionServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            if os.environ.get("ZEN_SERVER_LOG"):
                super().log_message(format, *args)

        def _send_json(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_stream(self, resp: dict) -> None:
            parts = []
            for ch in resp["choices"]:
                chunk = {k: resp[k] for k in ("id", "object", "created", "model")}
                chunk["choices"] = [ch]
                parts.append(f"data: {json.dumps(chunk)}\n\n")
            parts.append("data: [DONE]\n\n")
            data = "".join(parts).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                cfg = server.engine.model_cfg
                self._send_json(
                    200,
                    {
                        "status": "ok",
                        "model": server.model_name,
                        "vocab_size": cfg.vocab_size,
                        "context_length": cfg.max_position_embeddings,
                    },
                )
            elif path == "/v1/models":
                self._send_json(
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
                self._send_json(
                    404,
                    _error(
                        f"No route GET {path}; use GET /health, GET /v1/models or "
                        "POST /v1/completions.",
                        kind="not_found",
                    ),
                )

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            if path not in ("/v1/completions", "/completions"):
                self._send_json(
                    404,
                    _error(f"No route POST {path}; use POST /v1/completions.", kind="not_found"),
                )
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length <= 0 or length > MAX_BODY_BYTES:
                self.close_connection = True
                self._send_json(
                    400 if length <= MAX_BODY_BYTES else 413,
                    _error(
                        f"Bad Content-Length {self.headers.get('Content-Length')!r}: send a JSON "
                        f"body of 1..{MAX_BODY_BYTES} bytes with its Content-Length header."
                    ),
                )
                return
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self._send_json(
                    400,
                    _error(
                        f"The request body is not valid JSON ({e}); send a JSON object such as "
                        '{"prompt": "def f():", "max_tokens": 16} with Content-Type: '
                        "application/json."
                    ),
                )
                return
            try:
                resp, stream = server.respond(body)
            except RequestError as e:
                self._send_json(400, _error(str(e), e.param))
                return
            except ValueError as e:  # engine-side validation (lengths, settings)
                self._send_json(400, _error(str(e)))
                return
            except TimeoutError as e:
                self._send_json(503, _error(str(e), kind="timeout"))
                return
            except Exception as e:  # a bug: say so instead of dropping the connection
                self._send_json(500, _error(f"{type(e).__name__}: {e}", kind="server_error"))
                return
            if stream:
                self._send_stream(resp)
            else:
                self._send_json(200, resp)

    return Handler
