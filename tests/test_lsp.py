"""The language server end to end through pytest-lsp (a real LSP client; the server runs as
`python -m zen_code_jax.lsp` in a subprocess), plus its pure text rules.

Two kinds of server per module, each started once: the in-process engine (random `tiny`
weights, the test tokenizer) and remote backends pointed at a recording HTTP server in this
process, which answers deterministic text so the editor-side rules (encodings, CRLF,
single/multi-line, cancellation closing the connection) are checked exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient

from zen_code_jax.data.fim import unit_draw
from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.repo_window import repo_windows
from zen_code_jax.lsp import text as tx

ROOT = Path(__file__).resolve().parents[1]
UTIL = "def helper(x):\n    return x * 2\n\n\nclass Box:\n    def __init__(self, v):\n        self.v = v\n"
MAIN = (
    "import util\n\n\ndef run(n):\n    total = 0\n    for i in range(n):\n"
    "        total += util.helper(i)\n    return total\n"
)


def _workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "util.py").write_text(UTIL)
    (path / "main.py").write_text(MAIN)
    return path


async def _start(
    args: list[str],
    root: Path,
    encodings: list[str] | None,
    options: dict | None = None,
    inline: bool = False,
) -> LanguageClient:
    """A pytest-lsp client connected to `python -m zen_code_jax.lsp ARGS`, initialized."""
    cfg = ClientServerConfig(server_command=[sys.executable, "-m", "zen_code_jax.lsp", *args])
    client = await cfg.start()
    caps = lsp.ClientCapabilities(
        general=lsp.GeneralClientCapabilities(position_encodings=encodings),
        window=lsp.WindowClientCapabilities(work_done_progress=True),
    )
    if inline:  # a client with LSP 3.18 inline completion (VS Code, Neovim 0.12)
        caps.text_document = lsp.TextDocumentClientCapabilities(
            inline_completion=lsp.InlineCompletionClientCapabilities()
        )
    client.init_result = await client.initialize_session(
        lsp.InitializeParams(
            capabilities=caps,
            workspace_folders=[lsp.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
            initialization_options={"debounceMs": 0, **(options or {})},
        )
    )
    return client


def _open(client: LanguageClient, uri: str, text: str, version: int = 1) -> None:
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(
                uri=uri, language_id="python", version=version, text=text
            )
        )
    )


async def _prompt(client: LanguageClient, uri: str, line: int, character: int):
    params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
    return await client.protocol.send_request_async("zenCode/prompt", params)


async def _inline(client: LanguageClient, uri: str, line: int, character: int):
    return await client.text_document_inline_completion_async(
        lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(
                trigger_kind=lsp.InlineCompletionTriggerKind.Invoked
            ),
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=lsp.Position(line=line, character=character),
        )
    )


# ----------------------------------------------------------------------------- pure rules
def test_offsets_in_each_encoding_and_lsp_line_ends():
    text = 'a\r\ns = "😀中" + x\rlast\x0cstill last'
    # line 1: `s = "` is 5 units in every encoding; 😀 is 2 UTF-16 / 4 UTF-8 / 1 UTF-32 units
    after_emoji = text.index("中")
    assert tx.offset_at(text, 1, 7, "utf-16") == after_emoji
    assert tx.offset_at(text, 1, 9, "utf-8") == after_emoji
    assert tx.offset_at(text, 1, 6, "utf-32") == after_emoji
    assert tx.offset_at(text, 1, 6, "utf-16") == after_emoji - 1  # inside the pair: its start
    # a lone \r ends a line; a form feed does not (str.splitlines would break there)
    assert tx.offset_at(text, 2, 5, "utf-16") == text.index("\x0c") + 1
    assert tx.offset_at(text, 1, 999, "utf-16") == text.index("\rlast")
    assert tx.offset_at(text, 9, 0, "utf-16") == len(text)
    for enc in tx.ENCODINGS:
        for off in (0, 3, after_emoji, len(text)):
            assert tx.offset_at(text, *tx.position_at(text, off, enc), enc) == off


def test_single_or_multi_line_by_what_follows_the_cursor():
    def mode(before: str, after: str) -> bool:
        doc = tx.Document("u", before + after)
        line, ch = tx.position_at(doc.text, len(before))
        return tx.is_multiline(tx.cursor(doc, line, ch, "utf-16"))

    assert not mode("x = foo(", ")\n")  # text after the cursor: finish the line
    assert not mode("x = foo", "\n")  # end of a non-empty line
    assert mode("def f(a):\n    ", "\n")  # empty block at end of file
    assert mode("def f(a):\n    ", "\n\ndef g():\n    pass\n")  # next line dedented
    assert not mode("def f(a):\n    ", "\n    return a\n")  # the block has a body


def test_incremental_edits_in_utf16_and_crlf():
    doc = tx.Document("u", "ab😀cd\r\nline2\r\n")
    doc.apply((0, 4), (0, 5), "X", "utf-16")  # replaces c (after the 2-unit emoji)
    assert doc.text == "ab😀Xd\r\nline2\r\n"
    doc.apply((0, 6), (1, 4), "", "utf-16")  # join lines across the CRLF
    assert doc.text == "ab😀Xd2\r\n"
    assert doc.eol == "\r\n"
    cur = tx.cursor(doc, 1, 0, "utf-16")
    assert cur.prefix == "ab😀Xd2\n" and cur.suffix == ""
    assert tx.shape_completion("a\n    b\nc", cur, True) == "a\r\n    b\r\nc"


# ----------------------------------------------------------------------------- in-process
@pytest.fixture(scope="module")
def tok_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save(d)
    return d


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local(tok_dir, tmp_path_factory):
    root = _workspace(tmp_path_factory.mktemp("ws") / "proj")
    args = ["--random_preset=tiny", f"--tokenizer={tok_dir}"]
    client = await _start(args, root, None)
    client.root = root
    yield client
    await client.shutdown_session()
    await client.stop()


@pytest.fixture(scope="module")
def ref_engine(tiny_tokenizer):
    from zen_code_jax.infer.engine import InferenceEngine, random_params
    from zen_code_jax.model.config import get_preset

    cfg = get_preset("tiny")
    return InferenceEngine(random_params(cfg, 0), cfg, tiny_tokenizer, max_batch_size=1)


pytestmark_async = pytest.mark.asyncio(loop_scope="module")


@pytestmark_async
async def test_initialize_negotiates_utf16_and_reports_loading(local):
    caps = local.init_result.capabilities
    assert caps.position_encoding == lsp.PositionEncodingKind.Utf16
    assert caps.inline_completion_provider is not None and caps.completion_provider is not None
    sync = caps.text_document_sync
    assert getattr(sync, "change", sync) == lsp.TextDocumentSyncKind.Incremental
    uri = (local.root / "main.py").as_uri()
    _open(local, uri, MAIN)
    await _prompt(local, uri, 0, 0)  # waits for the model
    (reports,) = local.progress_reports.values()
    assert isinstance(reports[0], lsp.WorkDoneProgressBegin)
    assert isinstance(reports[-1], lsp.WorkDoneProgressEnd) and reports[-1].message == "ready"


@pytestmark_async
async def test_inline_completion_is_the_engines_decode_of_the_prompt(local, ref_engine):
    from zen_code_jax.infer.engine import CompletionRequest

    uri = (local.root / "scratch.py").as_uri()
    text = "def add(a, b):\n    return a + \n"
    _open(local, uri, text)
    p = await _prompt(local, uri, 1, 15)
    assert not p.multiline and p.prefix == "def add(a, b):\n    return a + "
    got = await _inline(local, uri, 1, 15)
    want = ref_engine.complete([CompletionRequest(list(p.ids), p.maxTokens, stop=("\n",))])[0].text
    assert len(want) > 0, "the fixture must decode a non-empty line"
    assert [i.insert_text for i in got.items] == [want.split("\n")[0]]
    assert got.items[0].range.start == lsp.Position(line=1, character=15)
    fallback = await local.text_document_completion_async(
        lsp.CompletionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=lsp.Position(line=1, character=15),
        )
    )
    assert [i.text_edit.new_text for i in fallback.items] == [got.items[0].insert_text]


@pytestmark_async
async def test_incremental_edits_then_non_ascii_utf16_position(local):
    uri = (local.root / "edit.py").as_uri()
    _open(local, uri, "x = 1\ny = 2\n")
    change = lambda sl, sc, el, ec, t: lsp.TextDocumentContentChangePartial(  # noqa: E731
        range=lsp.Range(
            start=lsp.Position(line=sl, character=sc), end=lsp.Position(line=el, character=ec)
        ),
        text=t,
    )
    local.text_document_did_change(
        lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                change(0, 4, 0, 5, "10"),  # x = 10
                change(1, 0, 1, 0, 's = "😀中文" + '),  # insert before `y = 2`
                change(1, 13, 1, 18, ""),  # delete `y = 2`: 13 UTF-16 units precede it
            ],
        )
    )
    # line 1 is now `s = "😀中文" + `: the emoji is 2 UTF-16 units, the CJK 1 each
    p = await _prompt(local, uri, 1, 13)
    assert p.prefix == 'x = 10\ns = "😀中文" + '
    assert p.suffix == "\n"
    p = await _prompt(local, uri, 1, 7)  # just after the emoji
    assert p.prefix.endswith('s = "😀') and p.suffix.startswith('中文" + ')


@pytestmark_async
async def test_crlf_document_is_shown_with_lf(local):
    uri = (local.root / "crlf.py").as_uri()
    _open(local, uri, "a = 1\r\nb = \r\nc = 3\r\n")
    p = await _prompt(local, uri, 1, 4)
    assert p.prefix == "a = 1\nb = " and p.suffix == "\nc = 3\n"


@pytestmark_async
async def test_prompt_equals_the_training_window_of_the_same_files(local, tiny_tokenizer):
    """main.py imports util.py: the prompt is the pipeline's repository window of
    [util.py, main.py] (report format, FIM of main.py) token for token up to the middle."""
    root = local.root
    files = [("util.py", UTIL), ("main.py", MAIN)]
    assert order_files(dict(files)) == ["util.py", "main.py"]
    for seed in range(100):  # a draw whose middle is inside main.py and keeps `import util`
        pre, mid, suf = unit_draw(seed, "repo", root.name, "0").split(MAIN + "\n")
        if mid and len(suf) > 1 and "import util" in pre + suf:
            break
    window = repo_windows(files, tiny_tokenizer, seed, 2048, fim_rate=1.0, repo=root.name)
    assert len(window) == 1
    uri = (root / "main.py").as_uri()
    doc = pre + suf[:-1]  # the editor holds the file without the middle (not yet written)
    local.text_document_did_change(
        lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=5),
            content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=doc)],
        )
    )
    line, ch = tx.position_at(doc, len(pre))
    p = await _prompt(local, uri, line, ch)
    assert "edit.py" in p.context and "util.py" in p.context  # edited earlier: joins
    local.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"recentDocuments": 0})
    )
    p = await _prompt(local, uri, line, ch)
    assert list(p.context) == ["util.py"] and p.path == "main.py"
    ids = list(p.ids)
    assert ids[-1] == tiny_tokenizer.fim_middle_id
    assert ids == window[0][: len(ids)].tolist()


@pytestmark_async
async def test_cancel_request_before_the_engine_runs(local):
    local.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"zenCode": {"debounceMs": 3000}})
    )
    uri = (local.root / "main.py").as_uri()
    t0 = time.monotonic()
    fut = asyncio.ensure_future(
        local.protocol.send_request_async(
            lsp.TEXT_DOCUMENT_INLINE_COMPLETION,
            lsp.InlineCompletionParams(
                context=lsp.InlineCompletionContext(
                    trigger_kind=lsp.InlineCompletionTriggerKind.Automatic
                ),
                text_document=lsp.TextDocumentIdentifier(uri=uri),
                position=lsp.Position(line=0, character=0),
            ),
            msg_id="cancel-me",
        )
    )
    await asyncio.sleep(0.2)
    local.protocol.notify(lsp.CANCEL_REQUEST, lsp.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as err:
        await fut
    assert time.monotonic() - t0 < 2.5, "the cancelled request waited out its debounce"
    assert "cancel" in str(err.value).lower()
    local.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"debounceMs": 0})
    )
    assert (await _inline(local, uri, 3, 0)) is not None  # still serving


def _alive_for(turns: int) -> tuple[Callable[[], bool], list[int]]:
    """An `alive` callback that says False from its `turns`+1-th poll on, and its polls."""
    polls: list[int] = []

    def alive() -> bool:
        polls.append(1)
        return len(polls) <= turns

    return alive, polls


def test_engine_complete_stops_a_running_decode_when_not_alive(ref_engine, tiny_tokenizer):
    """The hook the language server cancels through: `complete(..., alive=)` polls once per
    decoder turn and ends the call at the first False (a cancelled row's text is dropped,
    as the caller no longer wants it); a row still waiting for a slot comes back empty."""
    from zen_code_jax.infer.engine import CompletionRequest

    ids = tiny_tokenizer.encode("def add(a, b):\n    return a + b\n")
    always, polls = _alive_for(10**6)
    full = ref_engine.complete([CompletionRequest(ids, 48)], alive=always)[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 48
    assert len(polls) >= 47  # polled every turn while the row decoded
    alive, polls = _alive_for(5)
    cut = ref_engine.complete([CompletionRequest(ids, 48)], alive=alive)[0]
    assert (cut.finish_reason, cut.text, cut.token_ids) == ("cancelled", "", [])
    assert len(polls) == 6, "the decode went on after alive() said False"
    # one slot (max_batch_size=1): the second row waits, and is dropped with the job
    alive, polls = _alive_for(5)
    a, b = ref_engine.complete(
        [CompletionRequest(ids, 48), CompletionRequest(ids[:-2], 48)], alive=alive
    )
    assert a.finish_reason == b.finish_reason == "cancelled" and len(polls) == 6
    assert (b.text, b.token_ids) == ("", [])
    assert ref_engine.complete([CompletionRequest(ids, 48)])[0].token_ids == full.token_ids


class _SlowTurns:
    """The engine, with every decoder turn made 50 ms slower (through the `alive` poll the
    scheduler makes once a turn), so a test can cancel a decode that is surely running."""

    def __init__(self, engine):
        self.engine, self.turns = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def complete(self, requests, alive=None):
        def slow_alive() -> bool:
            self.turns += 1
            time.sleep(0.05)
            return alive is None or alive()

        return self.engine.complete(requests, alive=slow_alive)


def test_local_backend_cancel_ends_the_running_decode(ref_engine):
    """Cancelling `LocalBackend.infill` while the engine decodes ends the decode at the next
    turn (before this hook, it ran out its budget), and frees the one engine thread for
    the next keystroke's request."""
    from zen_code_jax.lsp.backend import EngineSource, InfillRequest, LocalBackend

    backend = LocalBackend(EngineSource())
    backend.engine = slow = _SlowTurns(ref_engine)
    req = InfillRequest("class A:\n    ", "", [], "a.py", None, 40, ())

    async def scenario() -> tuple[float, str]:
        task = asyncio.ensure_future(backend.infill(req))
        await asyncio.sleep(0.3)  # prefill and a few 50 ms turns
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        nxt = await backend.infill(dataclasses.replace(req, max_tokens=1))
        return time.monotonic() - t0, nxt

    waited, nxt = asyncio.run(scenario())
    assert backend.stats["finish_cancelled"] == 1 and backend.stats["cancelled"] == 1
    assert slow.turns < 20, f"the cancelled decode ran on for {slow.turns} turns"
    assert waited < 1.0, f"the next request waited {waited:.2f} s for the cancelled one"
    assert backend.stats["finish_length"] == 1 and isinstance(nxt, str)


# ----------------------------------------------------------------------------- remote
class _Recorder(BaseHTTPRequestHandler):
    """Answers /v1/completions (SSE) and /infill with fixed text; records every body."""

    bodies: list[dict] = []
    disconnected = threading.Event()
    reply = "a = 1\n    b = 2\nc = 3\n"

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append({"route": self.path, **body})
        if self.path == "/infill":
            data = json.dumps({"content": self.reply}, separators=(",", ":")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        slow = "SLOW" in body["prompt"]
        if "DELAY" in body["prompt"]:
            time.sleep(0.6)
        try:
            for piece in [self.reply[:3], self.reply[3:]] if not slow else ["x"] * 100:
                chunk = {"choices": [{"index": 0, "text": piece}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if slow:
                    time.sleep(0.05)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            type(self).disconnected.set()


@pytest.fixture(scope="module")
def recorder():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def remote(recorder, tmp_path_factory):
    root = _workspace(tmp_path_factory.mktemp("ws") / "rproj")
    client = await _start([f"--url={recorder}", "--model=m"], root, ["utf-8", "utf-16"])
    client.root = root
    yield client
    await client.shutdown_session()
    await client.stop()


@pytestmark_async
async def test_remote_utf8_positions_context_and_body(remote):
    assert remote.init_result.capabilities.position_encoding == lsp.PositionEncodingKind.Utf8
    uri = (remote.root / "main.py").as_uri()
    text = 'import util\ns = "😀中文" + t\n'
    _open(remote, uri, text)
    _Recorder.bodies.clear()
    got = await _inline(remote, uri, 1, 4 + 1 + 4 + 6)  # after 中文 (UTF-8 bytes)
    (body,) = _Recorder.bodies
    assert body["route"] == "/v1/completions" and body["model"] == "m" and body["stream"]
    assert body["prompt"] == 'import util\ns = "😀中文' and body["suffix"] == '" + t\n'
    assert body["path"] == "main.py" and body["context"] == [{"path": "util.py", "content": UTIL}]
    assert body["stop"] == ["\n"] and body["max_tokens"] == 32
    assert [i.insert_text for i in got.items] == ["a = 1"]  # a single line: text follows


def _change_full(client: LanguageClient, uri: str, text: str, version: int) -> None:
    client.text_document_did_change(
        lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )


@pytestmark_async
async def test_an_edit_while_a_request_waits_or_decodes_drops_its_answer(remote):
    """Found with Neovim 0.11: a completion that arrives after more typing was shown at
    its old position. An edit while the request debounces: no decode, empty answer; an
    edit while the backend decodes: the answer is dropped (empty)."""
    uri = (remote.root / "stale.py").as_uri()
    _open(remote, uri, "x = 1\n")
    remote.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"debounceMs": 400})
    )
    _Recorder.bodies.clear()
    fut = asyncio.ensure_future(_inline(remote, uri, 0, 5))
    await asyncio.sleep(0.1)
    _change_full(remote, uri, "x = 12\n", 2)
    assert not (await fut).items and _Recorder.bodies == []  # never decoded
    remote.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"debounceMs": 0})
    )
    _change_full(remote, uri, "# DELAY\nx = 12\n", 3)  # the recorder answers after 0.6 s
    fut = asyncio.ensure_future(_inline(remote, uri, 1, 6))
    await asyncio.sleep(0.3)
    _change_full(remote, uri, "# DELAY\nx = 123\n", 4)
    assert not (await fut).items and len(_Recorder.bodies) == 1  # decoded, then dropped
    got = await _inline(remote, uri, 1, 7)  # nothing typed meanwhile: answered
    assert [i.insert_text for i in got.items] == ["a = 1"]


@pytestmark_async
async def test_remote_crlf_empty_block_gets_the_blocks_lines(remote):
    uri = (remote.root / "block.py").as_uri()
    _open(remote, uri, "def f(a):\r\n    \r\n\r\ndef g():\r\n    pass\r\n")
    _Recorder.bodies.clear()
    got = await _inline(remote, uri, 1, 4)
    (body,) = _Recorder.bodies
    assert body["prompt"] == "def f(a):\n    " and body["suffix"].startswith("\n\ndef g():\n")
    assert body["max_tokens"] == 128
    # `c = 3` leaves the block (indented less than the cursor): cut; CRLF written back
    assert [i.insert_text for i in got.items] == ["a = 1\r\n    b = 2"]


@pytestmark_async
async def test_remote_cancel_closes_the_stream(remote):
    uri = (remote.root / "slow.py").as_uri()
    _open(remote, uri, "SLOW = ")
    _Recorder.disconnected.clear()
    fut = asyncio.ensure_future(
        remote.protocol.send_request_async(
            lsp.TEXT_DOCUMENT_INLINE_COMPLETION,
            lsp.InlineCompletionParams(
                context=lsp.InlineCompletionContext(
                    trigger_kind=lsp.InlineCompletionTriggerKind.Automatic
                ),
                text_document=lsp.TextDocumentIdentifier(uri=uri),
                position=lsp.Position(line=0, character=7),
            ),
            msg_id="slow-1",
        )
    )
    await asyncio.sleep(0.5)  # streaming, 0.05 s a chunk, 5 s in all
    remote.protocol.notify(lsp.CANCEL_REQUEST, lsp.CancelParams(id="slow-1"))
    with pytest.raises(JsonRpcException) as err:
        await fut
    assert "cancel" in str(err.value).lower()
    assert await asyncio.to_thread(_Recorder.disconnected.wait, 3.0), "the stream was not closed"


@pytestmark_async
async def test_bad_setting_is_reported_by_name(remote):
    remote.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"debounce": 5})
    )
    msg = await remote.wait_for_notification(lsp.WINDOW_SHOW_MESSAGE)
    assert "debounce" in msg.message and "debounceMs" in msg.message
    remote.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"completionItems": "sometimes"})
    )
    msg = await remote.wait_for_notification(lsp.WINDOW_SHOW_MESSAGE)
    assert "completionItems" in msg.message and "'auto', 'always', 'never'" in msg.message


@pytestmark_async
async def test_llama_infill_api_and_shutdown_exit(recorder, tmp_path):
    root = _workspace(tmp_path / "lproj")
    client = await _start([f"--url={recorder}", "--api=llama_infill"], root, None, inline=True)
    uri = (root / "main.py").as_uri()
    _open(client, uri, "import util\nx = \n")
    _Recorder.bodies.clear()
    got = await _inline(client, uri, 1, 4)
    (body,) = _Recorder.bodies
    assert body["route"] == "/infill"
    assert body["input_prefix"] == "import util\nx = " and body["input_suffix"] == "\n"
    assert body["input_extra"] == [{"filename": "util.py", "text": UTIL}]
    assert body["n_predict"] == 32 and body["path"] == "main.py"
    assert [i.insert_text for i in got.items] == ["a = 1"]
    # this client shows inline completions: completion items would decode twice
    _Recorder.bodies.clear()
    items = await client.text_document_completion_async(
        lsp.CompletionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=lsp.Position(line=1, character=4),
        )
    )
    assert list(items.items) == [] and _Recorder.bodies == []
    await client.shutdown_session()  # shutdown, then exit: the process ends with 0
    assert client._server.returncode == 0
    await client.stop()


# ----------------------------------------------------------------------------- a real run
@pytest.mark.slow
@pytestmark_async
async def test_run_dir_backend_loads_the_checkpoint_in_the_runs_format(tmp_path_factory):
    """`--run_dir --step`: a 2-step smoke run's checkpoint and tokenizer, and the prompt in
    the run's `data.repo_format` (what `load_engine` must keep doing when it changes)."""
    from test_experiments import ok, run_cli, smoke_workdir

    from zen_code_jax.checkpoint import restore_for_inference
    from zen_code_jax.data.hf_tokenizer import check_repo_format
    from zen_code_jax.data.repo_format import RepoFormat

    wd = smoke_workdir(tmp_path_factory)
    args = ["--config.name=lsp_run", "--mode=train", "--config.train.steps=2"]
    ok(run_cli(wd, "experiments/pretrain.py:smoke", *args, devices=1))
    run = wd / "lsp_run" / "main"
    _, _, tok, config = restore_for_inference(run, step=2)
    fmt = RepoFormat(check_repo_format(tok, str(config.data.repo_format)))
    root = _workspace(tmp_path_factory.mktemp("ws") / "runproj")
    client = await _start([f"--run_dir={run}", "--step=2"], root, None)
    uri = (root / "main.py").as_uri()
    _open(client, uri, MAIN)
    p = await _prompt(client, uri, 4, 4)
    assert list(p.context) == ["util.py"]
    want = fmt.fim_prompt_ids(
        [("util.py", UTIL)], "main.py", p.prefix, p.suffix, "psm", tok, root.name
    )
    assert list(p.ids) == want
    assert (await _inline(client, uri, 4, 4)) is not None
    await client.shutdown_session()
    await client.stop()
