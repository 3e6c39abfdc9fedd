"""The repository context the servers budget fits the model with the path / symbol prefix.

With `data.repo_prefix` on, a prompt opens with the paths of its files and the symbol
tables of its context files (`RepoFormat.open_ids`, up to `data.repo_prefix_tokens`). The
language server chose its context files by their own tokens only, so its prompts could
exceed the model's context by up to the prefix's budget (the engine then refuses the
request). Here, on a workspace whose target imports many files and a small model context:

- the language server's prompt (the one the in-process backend decodes) plus the
  completion budget stays within the context, for every number of imported files, in
  the report and qwen2.5 layouts; the old rule overflows on the same cases;
- with the prefix off, the prompt is the old rule's token for token wherever the old one
  fitted (the old rule is restated here as the reference);
- the completion server's parser builds the prefix into the prompt it checks, so a body
  that fits only without the prefix is a 400 `context_length_exceeded`, never a decode;
- the remote backend reserves the prefix budget the server reports in `GET /health`;
- the evaluation prompts (reserving the whole budget) stay within their limit.

The engine is a stand-in holding the real tokenizer, repository format and prompt builder
(`InferenceEngine.fim_prompt_ids` itself): budgeting needs no weights.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from lsprotocol import types as lsp

from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.repo_format import RepoFormat, RepoPrefix
from zen_code_jax.infer.engine import InferenceEngine
from zen_code_jax.lsp import text as tx
from zen_code_jax.lsp.backend import LocalBackend, RemoteBackend
from zen_code_jax.lsp.context import Workspace, select_context, trim_around_cursor
from zen_code_jax.lsp.server import ZenLanguageServer, create_server
from zen_code_jax.lsp.settings import Settings

N_MODULES = 10
MAX_CONTEXT = 512


class _Engine:
    """What the budget and the prompt need of an engine: tokenizer, format, context size."""

    fim_prompt_ids = InferenceEngine.fim_prompt_ids

    def __init__(self, tok, fmt: RepoFormat, max_context: int):
        self.tokenizer, self.repo_format = tok, fmt
        self.model_cfg = SimpleNamespace(
            max_position_embeddings=max_context, vocab_size=tok.vocab_size
        )

    def _encode_prompt(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)


def _module(i: int) -> str:
    return (
        f"LIMIT_{i} = {i}\n\n\ndef helper_{i}(x, y=2) -> int:\n    return x * y + {i}\n\n\n"
        f"class Thing{i}:\n    def __init__(self, v):\n        self.v = v\n\n"
        f"    def grow(self, k: int) -> int:\n        return self.v + k\n"
    )


def _main(n: int) -> str:
    imports = "".join(f"import mod{i}\n" for i in range(n))
    return imports + "\n\ndef run(n):\n    total = 0\n    total += \n    return total\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("budget") / "proj"
    root.mkdir()
    for i in range(N_MODULES):
        (root / f"mod{i}.py").write_text(_module(i))
    return root


def _server(tok, root: Path, fmt: RepoFormat, **settings) -> ZenLanguageServer:
    backend = LocalBackend(None)  # type: ignore[arg-type]
    backend.engine = _Engine(tok, fmt, MAX_CONTEXT)
    backend.max_context = MAX_CONTEXT
    server = create_server(backend, Settings().updated({"debounceMs": 0, **settings}))
    server.ws = Workspace(root)
    return server


def _open(server: ZenLanguageServer, root: Path, text: str) -> tuple[str, lsp.Position]:
    uri = (root / "main.py").as_uri()
    server.docs[uri] = tx.Document(uri, text, 1, "python")
    line = text.splitlines().index("    total += ")
    return uri, lsp.Position(line=line, character=len("    total += "))


def _old_request_ids(server: ZenLanguageServer, uri: str, pos: lsp.Position) -> list[int]:
    """The prompt the language server sent before the prefix was budgeted (the old rule,
    restated): context files by their own tokens within min(contextTokens, max_context -
    max_tokens - (the target as a file + 16))."""
    s, be = server.settings, server.backend
    cur = tx.cursor(server.docs[uri], pos.line, pos.character, "utf-16")
    max_tokens = s.maxTokensMultiLine if tx.is_multiline(cur) else s.maxTokensSingleLine
    prefix, suffix = trim_around_cursor(cur.prefix, cur.suffix, s.maxPrefixChars, s.maxSuffixChars)
    target = be.count_tokens("", prefix + suffix) + 16
    budget = min(s.contextTokens, be.max_context - max_tokens - target)
    docs = {u: d.text for u, d in server.docs.items()}
    ctx = select_context(
        server.ws, uri, docs[uri], docs, max(0, budget), be.count_tokens, s.recentDocuments
    )
    eng = be.engine
    return eng.fim_prompt_ids(prefix, suffix, "psm", ctx.files, ctx.path, ctx.repo)


@pytest.fixture(autouse=True)
def _no_protocol(monkeypatch):
    """The server is used without a client: positions in UTF-16, as before initialize."""
    monkeypatch.setattr(ZenLanguageServer, "encoding", property(lambda self: "utf-16"))


@pytest.mark.parametrize("layout", ["report", "qwen2.5"])
def test_prompt_with_symbol_prefix_stays_within_the_context(tiny_tokenizer, workspace, layout):
    """paths+symbols, 96 prefix tokens, a 512-token model: for 1..10 imported files the
    prompt + completion budget fits, the prefix is there, context files are still taken;
    the old rule overflows on some of the same cases (the bug)."""
    fmt = RepoFormat(layout, RepoPrefix("paths+symbols", 96))
    server = _server(tiny_tokenizer, workspace, fmt, contextTokens=4096)
    path_line = tiny_tokenizer.encode(
        "# Path: main.py\n" if layout == "report" else "Path: main.py\n"
    )
    old_over, requests = 0, []
    for n in range(1, N_MODULES + 1):
        uri, pos = _open(server, workspace, _main(n))
        req, _, _ = server.build_request(uri, pos)
        ids = server.backend.prompt_ids(req)
        assert len(ids) + req.max_tokens <= MAX_CONTEXT, (n, len(ids), req.max_tokens)
        assert req.context, f"{n} imports: no context file was taken"
        assert _contains(ids, path_line)  # the prefix is in the prompt
        old = _old_request_ids(server, uri, pos)
        old_over += len(old) + req.max_tokens > MAX_CONTEXT
        requests.append((n, req))
    # exact, not a reserve: each file left out would overflow (up to the slack the first
    # estimate of the target keeps, when it is above the exact count)
    be = server.backend
    for n, req in requests:
        legacy = be.count_tokens("", req.prefix + req.suffix) + 16
        slack = max(0, legacy - be.fixed_tokens(req.prefix, req.suffix, req.path, req.repo))
        for dep in (f"mod{i}.py" for i in range(n)):
            if dep not in dict(req.context):
                more = dict(req.context) | {dep: (workspace / dep).read_text()}
                order = [p for p in order_files({**more, "main.py": _main(n)}) if p != "main.py"]
                bigger = be.prompt_ids(
                    dataclasses.replace(req, context=[(p, more[p]) for p in order])
                )
                assert len(bigger) + req.max_tokens > MAX_CONTEXT - slack, (n, dep)
    assert old_over > 0, "the fixture must make the old rule overflow"


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i : i + len(part)] == part for i in range(len(ids) - len(part) + 1))


@pytest.mark.parametrize("layout", ["report", "qwen2.5"])
def test_prefix_off_prompts_are_the_old_rules_where_it_fitted(tiny_tokenizer, workspace, layout):
    """repo_prefix "none": the same tokens as the old rule for every case where the old
    prompt fitted the context (over contextTokens and file counts, so both the
    contextTokens and the model-context bound bind somewhere); where it did not fit (a
    deep target path: the old rule's +16 was short of its header), the new prompt does."""
    fmt = RepoFormat(layout, RepoPrefix())
    same = fixed = 0
    for context_tokens in (64, 200, 4096):
        server = _server(tiny_tokenizer, workspace, fmt, contextTokens=context_tokens)
        for n in range(1, N_MODULES + 1):
            uri, pos = _open(server, workspace, _main(n))
            req, _, _ = server.build_request(uri, pos)
            ids = server.backend.prompt_ids(req)
            old = _old_request_ids(server, uri, pos)
            if len(old) + req.max_tokens <= MAX_CONTEXT:
                assert ids == old, (context_tokens, n)
                same += 1
            else:
                assert len(ids) + req.max_tokens <= MAX_CONTEXT
                fixed += 1
    # A deep target path (longer than the old rule's 16 spare tokens), open documents as
    # context: the old rule overflowed here even without a prefix.
    server = _server(tiny_tokenizer, workspace, fmt, contextTokens=4096, recentDocuments=10)
    for i in range(N_MODULES):
        u = (workspace / f"mod{i}.py").as_uri()
        server.docs[u] = tx.Document(u, _module(i), 1, "python")
        server.ws.touch(u)
    deep = workspace / "src/a_rather/deeply_nested/package_structure/with_long_names/t.py"
    for k in range(0, 40, 3):
        text = "x = 1\n" * k + "\n\ndef run(n):\n    total = 0\n    total += \n    return total\n"
        server.docs[deep.as_uri()] = tx.Document(deep.as_uri(), text, 1, "python")
        pos = lsp.Position(line=k + 4, character=len("    total += "))
        req, _, _ = server.build_request(deep.as_uri(), pos)
        ids = server.backend.prompt_ids(req)
        old = _old_request_ids(server, deep.as_uri(), pos)
        if len(old) + req.max_tokens <= MAX_CONTEXT:
            assert ids == old, k
            same += 1
        else:
            assert len(ids) + req.max_tokens <= MAX_CONTEXT, k
            fixed += 1
    assert same >= 25 and fixed > 0


def test_prompt_equals_the_training_opening_of_the_chosen_files(tiny_tokenizer, workspace):
    """The budget changes which files, not how they are laid out: the prompt is
    `RepoFormat.fim_prompt_ids` of the chosen files (their prefix included)."""
    fmt = RepoFormat("report", RepoPrefix("paths+symbols", 96))
    server = _server(tiny_tokenizer, workspace, fmt, contextTokens=4096)
    uri, pos = _open(server, workspace, _main(4))
    req, _, _ = server.build_request(uri, pos)
    want = fmt.fim_prompt_ids(req.context, "main.py", req.prefix, req.suffix, "psm", tiny_tokenizer)
    assert server.backend.prompt_ids(req) == want


def test_server_parser_counts_the_prefix_it_builds(tiny_tokenizer):
    """The completion server builds the prefix into the prompt it length-checks: a body
    whose prompt fits without the prefix but not with it is refused by name (400
    context_length_exceeded), for the OpenAI extension and llama.cpp's input_extra."""
    from zen_code_jax.infer.protocol import APIError, Limits, RequestParser

    files = [{"path": f"mod{i}.py", "content": _module(i)} for i in range(3)]
    off = _Engine(tiny_tokenizer, RepoFormat("report", RepoPrefix()), 4096)
    on = _Engine(tiny_tokenizer, RepoFormat("report", RepoPrefix("paths+symbols", 96)), 4096)
    body = {"prompt": "def f(x):\n    return ", "suffix": "\n", "path": "main.py"}
    body |= {"context": files, "max_tokens": 8}
    n_off = len(RequestParser(off, "m", Limits(4096), 4096).completion(body).requests[0].prompt_ids)
    p_on = RequestParser(on, "m", Limits(4096), 4096).completion(body).requests[0].prompt_ids
    assert len(p_on) > n_off  # the prefix is in the prompt
    ctx = [(f["path"], f["content"]) for f in files]
    assert p_on == on.fim_prompt_ids(body["prompt"], "\n", "psm", ctx, "main.py")
    max_len = n_off + 8  # fits exactly without the prefix
    assert RequestParser(off, "m", Limits(4096), max_len).completion(body).requests
    with pytest.raises(APIError) as err:
        RequestParser(on, "m", Limits(4096), max_len).completion(body)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    extra = [{"filename": f["path"], "text": f["content"]} for f in files]
    infill = {"input_prefix": body["prompt"], "input_suffix": "\n", "input_extra": extra}
    infill |= {"n_predict": 8}
    n = len(RequestParser(off, "m", Limits(4096), 4096).infill(infill).requests[0].prompt_ids)
    with pytest.raises(APIError) as err:
        RequestParser(on, "m", Limits(4096), n + 8).infill(infill)
    assert err.value.code == "context_length_exceeded"


class _Health(BaseHTTPRequestHandler):
    body = {"status": "ok", "context_length": 512, "repo_prefix_tokens": 96}

    def log_message(self, *a):
        pass

    def do_GET(self):
        data = json.dumps(self.body).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_remote_backend_reserves_the_servers_prefix_budget():
    """`GET /health` says the served run's prefix budget; the remote backend (which has no
    tokenizer) reserves all of it. A server without the field (llama.cpp) reserves none,
    which is the estimate as before."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        be = RemoteBackend(url, model="m")
        before = be.fixed_tokens("def f(x):\n    ", "\n", "a.py", None)
        be.load(lambda msg: None)
        assert be.prefix_tokens == 96
        assert be.fixed_tokens("def f(x):\n    ", "\n", "a.py", None) == before + 96
        _Health.body = {"status": "ok"}
        be.load(lambda msg: None)
        assert be.prefix_tokens == 0
    finally:
        httpd.shutdown()


def test_health_reports_the_prefix_budget(tiny_tokenizer):
    """Our server's `/health` carries `repo_prefix_tokens` (0 when the run has none)."""
    from starlette.testclient import TestClient

    from zen_code_jax.infer.server_http import make_app

    for prefix, want in ((RepoPrefix(), 0), (RepoPrefix("paths", 48), 48)):
        srv = SimpleNamespace(
            engine=_Engine(tiny_tokenizer, RepoFormat("report", prefix), 512),
            model_name="m",
            scheduler=SimpleNamespace(busy_slots=0),
            decoder=SimpleNamespace(slots=1, max_len=512),
            metrics=SimpleNamespace(count=lambda route, status: None),
        )
        got = TestClient(make_app(srv)).get("/health").json()
        assert got["repo_prefix_tokens"] == want and got["context_length"] == 512


def test_eval_prompts_with_the_prefix_stay_within_their_limit(tiny_tokenizer):
    """The evaluation prompts reserve the whole prefix budget (an upper bound of the prefix
    for any files): with paths+symbols they stay within max_tokens."""
    from zen_code_jax.eval import crosscodeeval, repo_completion, repobench

    tok = tiny_tokenizer
    files = [(f"pkg/mod{i}.py", _module(i)) for i in range(N_MODULES)]
    target = _main(N_MODULES) * 3
    for layout in ("report", "qwen2.5"):
        fmt = RepoFormat(layout, RepoPrefix("paths+symbols", 96))
        for max_tokens in (256, 400, 700):
            row = {"repo": "proj", "path": "main.py", "prompt": target, "right_context": target}
            ids, info = crosscodeeval.build_prompt(
                {**row, "chunks": files}, fmt, tok, max_tokens, "psm"
            )
            assert len(ids) <= max_tokens
            assert info["context_files_kept"] > 0 or max_tokens < 700
            rb = {"repo_name": "proj", "file_path": "main.py", "import_statement": "import os"}
            rb |= {"cropped_code": target, "context": [{"path": p, "snippet": c} for p, c in files]}
            ids, _ = repobench.build_prompt(rb, fmt, tok, max_tokens)
            assert len(ids) <= max_tokens
            ex = {"path": "main.py", "in_file": target, "repo": "proj", "context_files": files}
            ids = repo_completion.build_prompt(ex, "cross_file_first", fmt, tok, max_tokens)
            assert len(ids) <= max_tokens


def _write_prefix_run(path: Path, tok) -> None:
    """A run directory as `run_arm` writes it (config.json, tokenizer/, a params-only
    checkpoint at step 0): tiny random weights, a 512-position model, windows with a
    paths+symbols prefix of 96 tokens."""
    import jax
    import numpy as np

    from zen_code_jax.checkpoint import Checkpointer, identity, tokenizer_to_json
    from zen_code_jax.config import base_config, config_to_dict, model_config_from, model_group
    from zen_code_jax.infer.engine import random_params
    from zen_code_jax.rundir import RunDir

    config = base_config()
    config.name, config.arm = "budget", path.name
    config.model = model_group("tiny")
    config.model.max_position_embeddings = MAX_CONTEXT
    config.data.repo_prefix, config.data.repo_prefix_tokens = "paths+symbols", 96
    cfg = model_config_from(config.model)
    run = RunDir(path)
    run.write_config(config_to_dict(config))
    tok.save(run.tokenizer_dir)
    ckpt = Checkpointer(run.checkpoints, async_save=False)
    meta = {
        "identity": identity(cfg, tok),
        "config": config_to_dict(config),
        "rng": np.asarray(jax.random.key_data(jax.random.key(0))).tolist(),
    }
    params = random_params(cfg, seed=0, scale=0.2)
    ckpt.save(
        0, {"step": np.asarray(0, np.int32), "params": params}, None, meta, tokenizer_to_json(tok)
    )
    ckpt.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_language_server_on_a_prefix_run_completes_within_the_context(
    tiny_tokenizer, workspace, tmp_path
):
    """As a user runs it: `python -m zen_code_jax.lsp --run_dir=RUN` (pytest-lsp client) on
    a run trained with paths+symbols and a 512-token context; main.py imports 3, then 10
    files. The prompt carries the prefix and fits with the completion budget, and the inline
    completion is answered (the old rule's prompt made the engine refuse the request)."""
    from pytest_lsp import ClientServerConfig

    run = tmp_path / "exp" / "prefix"
    _write_prefix_run(run, tiny_tokenizer)
    cfg = ClientServerConfig(
        server_command=[sys.executable, "-m", "zen_code_jax.lsp", f"--run_dir={run}"]
    )
    client = await cfg.start()
    try:
        await client.initialize_session(
            lsp.InitializeParams(
                capabilities=lsp.ClientCapabilities(),
                workspace_folders=[lsp.WorkspaceFolder(uri=workspace.as_uri(), name="proj")],
                initialization_options={"debounceMs": 0, "contextTokens": 4096},
            )
        )
        uri = (workspace / "main.py").as_uri()
        for n in (3, N_MODULES):  # the old rule's prompts: 513 + 32 and 460 + 32 tokens
            text = _main(n)
            client.text_document_did_open(
                lsp.DidOpenTextDocumentParams(
                    text_document=lsp.TextDocumentItem(
                        uri=uri, language_id="python", version=n, text=text
                    )
                )
            )
            line = text.splitlines().index("    total += ")
            where = {"line": line, "character": len("    total += ")}
            p = await client.protocol.send_request_async(
                "zenCode/prompt", {"textDocument": {"uri": uri}, "position": where}
            )
            assert len(p.ids) + p.maxTokens <= MAX_CONTEXT and p.context
            assert _contains(list(p.ids), tiny_tokenizer.encode("# Path: main.py\n"))
            got = await client.text_document_inline_completion_async(
                lsp.InlineCompletionParams(
                    context=lsp.InlineCompletionContext(
                        trigger_kind=lsp.InlineCompletionTriggerKind.Invoked
                    ),
                    text_document=lsp.TextDocumentIdentifier(uri=uri),
                    position=lsp.Position(**where),
                )
            )
            assert got is not None  # the old rule: a JSON-RPC error (the engine refused)
    finally:
        await client.shutdown_session()
        await client.stop()


def test_the_reserve_shortcut_chooses_the_same_files(tiny_tokenizer, workspace):
    """A candidate that fits with the whole prefix budget is taken without pricing its
    prefix: the choice is the one exact pricing of every candidate makes."""
    fmt = RepoFormat("report", RepoPrefix("paths+symbols", 96))
    server = _server(tiny_tokenizer, workspace, fmt)
    uri, _ = _open(server, workspace, _main(N_MODULES))
    be, docs = server.backend, {uri: _main(N_MODULES)}
    opening = lambda files: be.opening_tokens(files, "main.py", "proj")  # noqa: E731
    taken = set()
    for budget in range(0, 1400, 25):
        args = (server.ws, uri, docs[uri], docs, budget, be.count_tokens, 3, opening)
        got = select_context(*args, 96)
        assert got == select_context(*args, None), budget
        taken.add(len(got.files))
    assert len(taken) >= 5  # from no file to many
