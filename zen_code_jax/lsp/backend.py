"""Where completions come from: the engine in this process, or a completion server.

Every call into `zen_code_jax.infer` is in `LocalBackend` (`load_engine` builds the engine,
`_infill` decodes), and every byte on the wire is in `RemoteBackend`, so a change of the
engine's construction or decoding API touches one small class. Both answer the same
`InfillRequest`: the target's prefix and suffix, its repository context and path.

Cancellation: the language server runs a request as an asyncio task and cancels it on
`$/cancelRequest`. A remote request is a streamed HTTP response, so cancelling closes the
connection and the server frees the slot at its next step. A local request waits for the
engine in a one-thread executor; cancelled before it starts, it never runs, and a decode
already running is ended at the engine's next decoder turn (`complete(..., alive=)`, the
scheduler's per-job cancel, as the HTTP server's on a disconnect), so the next keystroke's
request does not wait out a stale budget. Both count what happened in `stats`
(`zenCode/stats`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx

from zen_code_jax.lsp.context import as_pairs, estimate_tokens

APIS = ("completions", "llama_infill")


@dataclasses.dataclass(frozen=True)
class InfillRequest:
    """One completion to make: FIM around the cursor with repository context."""

    prefix: str
    suffix: str
    context: list[tuple[str, str]]
    path: str | None
    repo: str | None
    max_tokens: int
    stop: tuple[str, ...]
    temperature: float = 0.0
    top_p: float = 1.0


@dataclasses.dataclass(frozen=True)
class EngineSource:
    """What the in-process backend loads: a run directory, an HF directory, or random
    weights of a preset with a saved tokenizer (tests and benchmarks)."""

    run_dir: str | None = None
    hf_dir: str | None = None
    random_preset: str | None = None
    tokenizer: str | None = None
    step: int | None = None
    dtype: str | None = None
    seed: int = 0
    compilation_cache_dir: str | None = None  # None: the server's default (see `load`)


class Backend(Protocol):
    """The language server's view of a completion source."""

    max_context: int  # prompt + completion tokens the model takes
    prefix_tokens: int  # the path / symbol prefix's budget (`data.repo_prefix_tokens`; 0: off)
    exact: bool  # token counts from the model's tokenizer (else estimates: no tokenizer here)
    stats: collections.Counter[str]  # requests, cancelled, ... (`zenCode/stats`)

    def load(self, report: Callable[[str], None]) -> None: ...

    def count_tokens(self, path: str, content: str) -> int: ...

    def fixed_tokens(self, prefix: str, suffix: str, path: str | None, repo: str | None) -> int: ...

    def opening_tokens(
        self, files: list[tuple[str, str]], path: str | None, repo: str | None
    ) -> int: ...

    async def infill(self, req: InfillRequest) -> str: ...

    def prompt_ids(self, req: InfillRequest) -> list[int] | None: ...

    async def close(self) -> None: ...


def load_engine(src: EngineSource) -> Any:
    """The engine for `src` (params only, one row at a time). The one place that constructs
    an engine (`InferenceEngine.from_run` for a run or an HF directory)."""
    # local import: jax and the model are heavy; a remote backend never loads them
    import jax

    from zen_code_jax.data.tokenizer_load import load_tokenizer
    from zen_code_jax.infer.engine import InferenceEngine, random_params
    from zen_code_jax.model.config import get_preset

    dtype = src.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    if src.run_dir or src.hf_dir:  # params only, with the run's facts (repository format)
        spec = src.run_dir or f"hf:{src.hf_dir}"
        return InferenceEngine.from_run(spec, dtype=dtype, step=src.step, max_batch_size=1)
    if not (src.random_preset and src.tokenizer):
        raise ValueError("Pass --run_dir, --hf_dir, or --random_preset with --tokenizer.")
    cfg = get_preset(src.random_preset).replace(dtype=dtype)
    tok = load_tokenizer(src.tokenizer)
    return InferenceEngine(random_params(cfg, src.seed), cfg, tok, None, max_batch_size=1)


class LocalBackend:
    """The engine in this process, decoding one request at a time on a worker thread."""

    exact = True

    def __init__(self, src: EngineSource):
        self.src = src
        self.engine: Any = None
        self.max_context = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zen-lsp-engine")

    def load(self, report: Callable[[str], None]) -> None:
        """Load and compile. Each new prompt-length bucket compiles on its first request
        (seconds on a CPU), so the persistent compilation cache is on, where the HTTP
        server keeps it: a restarted editor compiles nothing it compiled before."""
        # local import: jax-heavy, as in load_engine
        from zen_code_jax.parallel.compilation_cache import enable_compilation_cache

        src = self.src
        cache = src.compilation_cache_dir
        if cache is None and src.run_dir:
            cache = str(Path(src.run_dir).absolute().parent.parent / "cache" / "jax")
        default = str(Path.home() / ".cache" / "zen_code_jax" / "jax")
        enable_compilation_cache(cache or default, explicit=src.compilation_cache_dir is not None)
        report("loading parameters")
        self.engine = load_engine(self.src)
        self.max_context = int(self.engine.model_cfg.max_position_embeddings)
        report("compiling")
        self._decode(InfillRequest("def f():\n    ", "\n", [], "warmup.py", None, 2, ("\n",)))

    @property
    def prefix_tokens(self) -> int:
        """The run's `data.repo_prefix_tokens` (0 when its windows have no prefix)."""
        return self.engine.repo_format.prefix.reserve if self.engine is not None else 0

    def count_tokens(self, path: str, content: str) -> int:
        """Tokens one context file takes in the prompt (header, content, trailer)."""
        return len(self.engine.repo_format.file_ids(path, content, self.engine.tokenizer))

    def fixed_tokens(self, prefix: str, suffix: str, path: str | None, repo: str | None) -> int:
        """Exact tokens of the prompt with no context file: the repository opening, the
        prefix's line of the target path, the target's header and the FIM around the
        cursor (what every choice of context files adds to)."""
        return len(self.prompt_ids(InfillRequest(prefix, suffix, [], path, repo, 0, ())))

    def opening_tokens(
        self, files: list[tuple[str, str]], path: str | None, repo: str | None
    ) -> int:
        """Exact tokens of the prompt's opening (repository opening and path / symbol
        prefix, `RepoFormat.open_ids`) for these context files in prompt order: the
        prefix lists their paths and symbols, so it grows with the choice of files."""
        fmt, tok = self.engine.repo_format, self.engine.tokenizer
        return len(fmt.open_ids(files, tok, repo, path))

    def prompt_ids(self, req: InfillRequest) -> list[int]:
        """The FIM prompt in the training layout (`RepoFormat` through the engine)."""
        return list(
            self.engine.fim_prompt_ids(
                req.prefix, req.suffix, "psm", req.context, req.path, req.repo
            )
        )

    def _decode(self, req: InfillRequest, cancelled: threading.Event | None = None) -> str:
        # local import: the engine's module pulls in jax (see load_engine)
        from zen_code_jax.infer.engine import CompletionRequest

        if cancelled is not None and cancelled.is_set():
            self.stats["cancelled_before_decode"] += 1
            return ""
        row = CompletionRequest(
            self.prompt_ids(req), req.max_tokens, req.temperature, req.top_p, req.stop
        )
        alive = None if cancelled is None else (lambda: not cancelled.is_set())
        t0 = time.perf_counter()
        out = self.engine.complete([row], alive=alive)[0]
        # the engine's own time, so the server's cost can be told apart from it
        self.stats["last_decode_ms"] = (time.perf_counter() - t0) * 1e3
        self.stats["decodes"] += 1
        self.stats[f"finish_{out.finish_reason}"] += 1
        self.stats["decoded_tokens"] += len(out.token_ids)
        return out.text

    async def infill(self, req: InfillRequest) -> str:
        self.stats["requests"] += 1
        cancelled = threading.Event()
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._decode, req, cancelled)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.stats["cancelled"] += 1
            cancelled.set()
            raise

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RemoteBackend:
    """A completion server over HTTP: ours (`/v1/completions` with the repository-context
    extension) or any llama.cpp-compatible `/infill`."""

    exact = False

    def __init__(
        self,
        url: str,
        api: str = "completions",
        api_key: str | None = None,
        model: str | None = None,
        max_context: int = 2048,
        timeout_s: float = 30.0,
    ):
        if api not in APIS:
            raise ValueError(f"--api={api!r} is unknown; use one of {APIS}.")
        self.url, self.api, self.model = url.rstrip("/"), api, model
        self.max_context = max_context
        self.prefix_tokens = 0  # the server's `repo_prefix_tokens` (GET /health, at load)
        self.stats: collections.Counter[str] = collections.Counter()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=timeout_s)

    def load(self, report: Callable[[str], None]) -> None:
        """Learn the prefix budget of the server's run (our `GET /health`; a server without
        the field, e.g. llama.cpp, has none), and the model id (our server wants it) unless
        --model named one."""
        try:
            r = httpx.get(f"{self.url}/health", headers=self.client.headers, timeout=30.0)
            health = r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            health = {}  # the completion requests will say what is wrong with the server
        self.prefix_tokens = int(health.get("repo_prefix_tokens", 0) or 0)
        if self.api != "completions" or self.model:
            return
        report(f"asking {self.url}/v1/models")
        r = httpx.get(f"{self.url}/v1/models", headers=self.client.headers, timeout=30.0)
        r.raise_for_status()
        self.model = r.json()["data"][0]["id"]

    def count_tokens(self, path: str, content: str) -> int:
        return estimate_tokens(path, content)

    def fixed_tokens(self, prefix: str, suffix: str, path: str | None, repo: str | None) -> int:
        """An estimate (no tokenizer here): the target as one file, 16 tokens for its
        header and the FIM sentinels, and the whole prefix budget of the server's run,
        an upper bound of its path / symbol prefix for any choice of files."""
        return estimate_tokens("", prefix + suffix) + 16 + self.prefix_tokens

    def opening_tokens(
        self, files: list[tuple[str, str]], path: str | None, repo: str | None
    ) -> int:
        return 0  # `fixed_tokens` holds the prefix's whole budget: no file adds to it

    def prompt_ids(self, req: InfillRequest) -> None:
        return None  # the server builds the prompt

    def body(self, req: InfillRequest) -> dict[str, Any]:
        """The request body of `req` for this API."""
        if self.api == "llama_infill":
            out: dict[str, Any] = {
                "input_prefix": req.prefix,
                "input_suffix": req.suffix,
                "input_extra": [{"filename": p, "text": c} for p, c in req.context],
                "n_predict": req.max_tokens,
                "temperature": req.temperature,
                "top_p": req.top_p,
                "stop": list(req.stop),
                "stream": False,
                "cache_prompt": True,
            }
            if req.path is not None:
                out["path"] = req.path  # our server's extension; llama.cpp ignores it
            return out
        out = {
            "model": self.model,
            "prompt": req.prefix,
            "suffix": req.suffix,
            "context": as_pairs(req.context),
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stop": list(req.stop),
            "stream": True,
        }
        if req.path is not None:
            out["path"] = req.path
        return out

    async def infill(self, req: InfillRequest) -> str:
        self.stats["requests"] += 1
        try:
            return await self._infill(req)
        except asyncio.CancelledError:
            self.stats["cancelled"] += 1  # the stream is closed on the way out
            raise

    async def _infill(self, req: InfillRequest) -> str:
        body = self.body(req)
        if self.api == "llama_infill":
            r = await self.client.post(f"{self.url}/infill", json=body)
            _check(r)
            return str(r.json().get("content", ""))
        parts: list[str] = []
        async with self.client.stream("POST", f"{self.url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                _check(r)
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices", ()):
                    parts.append(choice.get("text", ""))
        return "".join(parts)

    async def close(self) -> None:
        await self.client.aclose()


def _check(r: httpx.Response) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"completion server answered {r.status_code}: {r.text[:300]}")
