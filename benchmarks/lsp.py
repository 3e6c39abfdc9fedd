"""Editor-perceived latency of the language server: request -> response through LSP.

One workspace (a file that imports another), one single-line completion position, the
cpu_small preset with random weights (cpu scale). Four paths, interleaved request by
request so the machine's drift hits all alike:

  - engine:       the engine alone in this process: `engine.complete` on the very prompt
                  ids the in-process language server builds (`zenCode/prompt`);
  - lsp-local:    `textDocument/inlineCompletion` to `python -m zen_code_jax.lsp
                  --random_preset=cpu_small` (its own engine, same weights), timed at the
                  client from request to response;
  - http:         our completion server (`build_server`, in this process) asked directly
                  over HTTP with the body the remote language server sends;
  - lsp-remote:   `textDocument/inlineCompletion` to `python -m zen_code_jax.lsp --url=...`;
  - in-server engine: the language server's own `engine.complete` time for the lsp-local
                  request (`zenCode/stats` `last_decode_ms`, asked after it, untimed).

Added latency = lsp-local - engine, lsp-local - in-server engine (the server's own cost
measured within one process: JSON-RPC, context, tokenization, thread hops), and
lsp-remote - http; as differences of p50/p95 and as p50/p95 of the per-round differences.
The language server runs with `debounceMs: 0` (the debounce is a deliberate wait).

    python benchmarks/lsp.py [--preset cpu_small] [--n 30] [--max_tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx
from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zen_code_jax.data.tokenizer import Tokenizer  # noqa: E402
from zen_code_jax.infer.__main__ import build_server  # noqa: E402
from zen_code_jax.infer.engine import CompletionRequest, InferenceEngine, random_params  # noqa: E402
from zen_code_jax.model.config import get_preset  # noqa: E402

UTIL = "def helper(x):\n    return x * 2\n\n\nclass Box:\n    def __init__(self, v):\n        self.v = v\n"
MAIN = (
    "import util\n\n\ndef run(n):\n    total = 0\n    for i in range(n):\n"
    "        total += util.helper(i) + \n    return total\n"
)
LINE, CHAR = 6, len("        total += util.helper(i) + ")


# (language-server path, its baseline): "in-server engine" is the language server's own
# engine call for the same request, so lsp-local minus it is the server's cost measured in
# one process (the two processes of lsp-local vs engine drift apart on a loaded machine)
COMPARISONS = (
    ("lsp-local", "engine"),
    ("lsp-local", "in-server engine"),
    ("lsp-remote", "http"),
)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def start_lsp(args: list[str], root: Path, options: dict) -> LanguageClient:
    client = LanguageClient("bench", "0")
    await client.start_io(sys.executable, "-m", "zen_code_jax.lsp", *args)
    await client.initialize_async(
        lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(),
            workspace_folders=[lsp.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
            initialization_options=options,
        )
    )
    client.initialized(lsp.InitializedParams())
    uri = (root / "main.py").as_uri()
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id="python", version=1, text=MAIN)
        )
    )
    return client


async def prompt(client: LanguageClient, root: Path):
    params = {
        "textDocument": {"uri": (root / "main.py").as_uri()},
        "position": {"line": LINE, "character": CHAR},
    }
    return await client.protocol.send_request_async("zenCode/prompt", params)


async def inline(client: LanguageClient, root: Path) -> float:
    t0 = time.perf_counter()
    await client.text_document_inline_completion_async(
        lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(
                trigger_kind=lsp.InlineCompletionTriggerKind.Automatic
            ),
            text_document=lsp.TextDocumentIdentifier(uri=(root / "main.py").as_uri()),
            position=lsp.Position(line=LINE, character=CHAR),
        )
    )
    return time.perf_counter() - t0


async def stop(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


def summary(name: str, xs: list[float]) -> dict:
    return {"path": name, "n": len(xs), "p50_ms": 1e3 * pct(xs, 0.5), "p95_ms": 1e3 * pct(xs, 0.95)}


async def main_async(args: argparse.Namespace) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="zen_lsp_bench_"))
    root = tmp / "proj"
    root.mkdir()
    (root / "util.py").write_text(UTIL)
    (root / "main.py").write_text(MAIN)
    cfg = get_preset(args.preset).replace(dtype="float32")
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
    tok = Tokenizer.train([open(f).read() for f in files], cfg.vocab_size)
    tok.save(tmp / "tok")
    options = {"debounceMs": 0, "maxTokensSingleLine": args.max_tokens}

    engine = InferenceEngine(random_params(cfg, 0), cfg, tok, max_batch_size=1)
    local = await start_lsp(
        [f"--random_preset={args.preset}", f"--tokenizer={tmp / 'tok'}", "--dtype=float32"],
        root,
        options,
    )
    p = await prompt(local, root)  # waits for the model to load and compile
    row = CompletionRequest(list(p.ids), p.maxTokens, stop=("\n",))

    server = build_server(
        [
            f"--random_preset={args.preset}",
            f"--tokenizer={tmp / 'tok'}",
            "--dtype=float32",
            "--port=0",
            "--max_batch_size=1",
            "--max_context=2048",
            f"--compilation_cache_dir={tmp / 'cache'}",
        ]
    )
    server.start()
    remote = await start_lsp([f"--url={server.url}"], root, options)
    await prompt(remote, root)
    body = {
        "model": server.model_name,
        "prompt": p.prefix,
        "suffix": p.suffix,
        "context": [{"path": c, "content": (root / c).read_text()} for c in p.context],
        "path": p.path,
        "max_tokens": p.maxTokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["\n"],
        "stream": True,
    }
    http = httpx.AsyncClient(timeout=60)

    async def direct() -> float:
        t0 = time.perf_counter()
        async with http.stream("POST", f"{server.url}/v1/completions", json=body) as r:
            async for _ in r.aiter_lines():
                pass
        return time.perf_counter() - t0

    def engine_alone() -> float:
        t0 = time.perf_counter()
        engine.complete([row])
        return time.perf_counter() - t0

    paths = ("engine", "lsp-local", "in-server engine", "http", "lsp-remote")
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(args.warmup + args.n):
        got = {"engine": engine_alone(), "lsp-local": await inline(local, root)}
        # the language server's own engine call for that request (`zenCode/stats`, asked
        # after the timed request): the same process's decode, so lsp-local minus it is
        # the server's cost even when other processes' load skews the two processes apart
        stats = await local.protocol.send_request_async("zenCode/stats", {})
        got["in-server engine"] = stats.last_decode_ms / 1e3
        got["http"] = await direct()
        got["lsp-remote"] = await inline(remote, root)
        if i >= args.warmup:
            for k, v in got.items():
                times[k].append(v)
    await http.aclose()
    await stop(local)
    await stop(remote)
    server.shutdown()
    rows = [summary(k, v) for k, v in times.items()]
    by = {r["path"]: r for r in rows}
    for lsp_path, base in COMPARISONS:
        # the same request's two paths, round by round: less exposed to the machine's drift
        paired = [a - b for a, b in zip(times[lsp_path], times[base])]
        rows.append(
            {
                "path": f"{lsp_path} - {base}",
                "n": len(paired),
                "added_p50_ms": by[lsp_path]["p50_ms"] - by[base]["p50_ms"],
                "added_p95_ms": by[lsp_path]["p95_ms"] - by[base]["p95_ms"],
                "paired_p50_ms": 1e3 * pct(paired, 0.5),
                "paired_p95_ms": 1e3 * pct(paired, 0.95),
            }
        )
    for r in rows:
        r.update(preset=args.preset, prompt_tokens=len(p.ids), max_tokens=p.maxTokens)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="cpu_small")
    ap.add_argument("--n", type=int, default=30, help="timed requests per path")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max_tokens", type=int, default=16, help="single-line budget")
    args = ap.parse_args()
    rows = asyncio.run(main_async(args))
    print("| path | n | p50 ms | p95 ms |")
    print("|---|---|---|---|")
    for r in rows:
        if "p50_ms" in r:
            print(f"| {r['path']} | {r['n']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
    print()
    print(
        "| added by the language server | p50(a) - p50(b) | p95(a) - p95(b) | paired p50 | paired p95 |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        if "paired_p50_ms" in r:
            print(
                f"| {r['path']} | {r['added_p50_ms']:.1f} | {r['added_p95_ms']:.1f} | "
                f"{r['paired_p50_ms']:.1f} | {r['paired_p95_ms']:.1f} |"
            )
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
