"""The language server: inline completions (LSP 3.18) with repository context, on pygls.

Requests:
- `textDocument/inlineCompletion`: one item, the model's completion at the cursor (ghost
  text in VS Code, Neovim 0.12, Emacs lsp-mode);
- `textDocument/completion`: the same text as one completion item, for clients without
  inline completion (Helix, eglot, older Neovim);
- `zenCode/prompt` (ours): the prompt's token ids for a position (in-process backend), so
  tests and users can check the prompt against the training window;
- `zenCode/stats` (ours): the backend's counters (requests, cancelled, decodes by finish
  reason, decoded tokens), to see from an editor what cancellation saved.

Every completion request is logged (`--log_file`) with its method, position, answer and
time (or that it was cancelled or dropped as stale), which is how the editor trials in
docs/lsp.md were read.

Documents are kept here with LSP's own line rules (`text.py`), synced fully or
incrementally, in the position encoding negotiated at initialize (UTF-16 unless the
client offers utf-8 or utf-32 first; pygls chooses, this server follows). The model is
loaded after `initialized` on a thread, with `$/progress` notifications; a completion
request that comes earlier waits for it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import threading
import time
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from zen_code_jax.lsp import text as tx
from zen_code_jax.lsp.backend import Backend, InfillRequest
from zen_code_jax.lsp.context import Workspace, select_context, trim_around_cursor, uri_to_path
from zen_code_jax.lsp.settings import Settings

log = logging.getLogger("zen_code_jax.lsp")
PROMPT_METHOD = "zenCode/prompt"
STATS_METHOD = "zenCode/stats"


class ZenLanguageServer(LanguageServer):
    """pygls server holding the documents, the settings and the backend."""

    def __init__(self, backend: Backend, settings: Settings | None = None):
        super().__init__("zen-code-jax", importlib.metadata.version("zen-code-jax"))
        self.backend = backend
        self.settings = settings or Settings()
        self.docs: dict[str, tx.Document] = {}
        self.ws = Workspace(None)
        self.ready = asyncio.Event()
        self.load_error: str | None = None
        self.latest: dict[str, int] = {}  # uri -> id of its newest completion request
        self.edits: dict[str, int] = {}  # uri -> didOpen + didChange notifications so far
        self._seq = 0

    @property
    def encoding(self) -> str:
        enc = self.workspace.position_encoding if self.protocol.workspace else None
        return str(getattr(enc, "value", enc) or "utf-16")

    def completion_items_wanted(self) -> bool:
        """Whether `textDocument/completion` answers (see `Settings.completionItems`)."""
        mode = self.settings.completionItems
        if mode != "auto":
            return mode == "always"
        td = self.client_capabilities.text_document
        return td is None or td.inline_completion is None

    # ------------------------------------------------------------------ completion
    def build_request(self, uri: str, pos: lsp.Position) -> tuple[InfillRequest, tx.Cursor, bool]:
        """The backend request for a position, the cursor, and whether it is multi-line."""
        doc = self.docs.get(uri)
        if doc is None:
            raise ValueError(f"{uri} is not open; send textDocument/didOpen first.")
        s = self.settings
        cur = tx.cursor(doc, pos.line, pos.character, self.encoding)
        multi = s.multiline == "always" or (s.multiline == "auto" and tx.is_multiline(cur))
        max_tokens = s.maxTokensMultiLine if multi else s.maxTokensSingleLine
        prefix, suffix = trim_around_cursor(
            cur.prefix, cur.suffix, s.maxPrefixChars, s.maxSuffixChars
        )
        be, rel, repo = self.backend, self.ws.relpath(uri), self.ws.repo
        budget = s.contextTokens
        if be.max_context:
            # The prompt without context files, exactly (in-process) or estimated; never
            # below the first estimate (the target as a file, +16), so that with the prefix
            # off a prompt that fitted is chosen as before (see docs/lsp.md).
            legacy = be.count_tokens("", prefix + suffix) + 16
            fixed = max(legacy, be.fixed_tokens(prefix, suffix, rel, repo))
            budget = min(budget, be.max_context - max_tokens - fixed)
        opening = None  # remote: `fixed_tokens` reserved the whole prefix budget
        if be.exact and be.prefix_tokens and rel is not None:  # it grows with the files
            opening = lambda files: be.opening_tokens(files, rel, repo)  # noqa: E731
        open_docs = {u: tx.normalize_eol(d.text) for u, d in self.docs.items()}
        ctx = select_context(
            self.ws,
            uri,
            open_docs[uri],
            open_docs,
            max(0, budget),
            be.count_tokens,
            s.recentDocuments,
            opening,
            be.prefix_tokens,
        )
        req = InfillRequest(
            prefix,
            suffix,
            ctx.files,
            ctx.path,
            ctx.repo,
            max_tokens,
            tuple(tx.stops_for(multi)),
            s.temperature,
        )
        return req, cur, multi

    async def complete_at(self, uri: str, pos: lsp.Position, method: str) -> str | None:
        """The completion text to insert at `pos` (None when superseded or not ready),
        logged with `method` (which request asked)."""
        t0 = time.perf_counter()
        try:
            text = await self._complete_at(uri, pos)
        except asyncio.CancelledError:
            log.info("%s %s:%d:%d cancelled", method, uri, pos.line, pos.character)
            raise
        ms = (time.perf_counter() - t0) * 1000
        log.info("%s %s:%d:%d -> %r (%.1f ms)", method, uri, pos.line, pos.character, text, ms)
        return text

    async def _complete_at(self, uri: str, pos: lsp.Position) -> str | None:
        """None when a newer request or an edit made this one stale: `pos` is a position in
        the document as it was when the request came (Neovim 0.11 shows a completion that
        arrives after more typing, at the old position), so an edit meanwhile means the
        answer would be built from, or inserted into, another text."""
        self._seq += 1
        me = self.latest[uri] = self._seq
        edits = self.edits.get(uri)
        if self.settings.debounceMs:
            await asyncio.sleep(self.settings.debounceMs / 1000)
            if self.latest.get(uri) != me:
                return None  # a newer request for this document replaces this one
        await self.ready.wait()
        if self.load_error:
            raise RuntimeError(self.load_error)
        if self.edits.get(uri) != edits:
            return None  # edited while debouncing or loading: don't decode at all
        req, cur, multi = self.build_request(uri, pos)
        text = await self.backend.infill(req)
        if self.edits.get(uri) != edits:
            log.info("%s:%d:%d edited while decoding: answer dropped", uri, pos.line, pos.character)
            return None
        return tx.shape_completion(text, cur, multi)


def _range_at(pos: lsp.Position) -> lsp.Range:
    return lsp.Range(start=pos, end=pos)


def create_server(backend: Backend, settings: Settings | None = None) -> ZenLanguageServer:
    """The server with its features registered (not started)."""
    server = ZenLanguageServer(backend, settings)

    @server.feature(lsp.INITIALIZE)
    def initialize(ls: ZenLanguageServer, params: lsp.InitializeParams) -> None:
        root = None
        if params.workspace_folders:
            root = uri_to_path(params.workspace_folders[0].uri)
        elif params.root_uri:
            root = uri_to_path(params.root_uri)
        elif params.root_path:
            root = uri_to_path(f"file://{params.root_path}")
        ls.ws = Workspace(root)
        try:
            ls.settings = ls.settings.updated(params.initialization_options)
        except ValueError as e:
            ls.window_show_message(lsp.ShowMessageParams(lsp.MessageType.Error, str(e)))

    @server.feature(lsp.INITIALIZED)
    async def initialized(ls: ZenLanguageServer, params: lsp.InitializedParams) -> None:
        token = "zen-code-jax/load"
        progress = None
        caps = ls.client_capabilities.window
        if caps is not None and caps.work_done_progress:
            try:
                await ls.work_done_progress.create_async(token)
                progress = ls.work_done_progress
                progress.begin(
                    token,
                    lsp.WorkDoneProgressBegin(title="zen-code-jax", message="loading the model"),
                )
            except Exception as e:  # a client that refuses the token still gets completions
                log.warning("progress not available: %s", e)
                progress = None
        loop = asyncio.get_running_loop()

        def report(msg: str) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(
                    progress.report, token, lsp.WorkDoneProgressReport(message=msg)
                )

        def load() -> None:
            try:
                ls.backend.load(report)
            except Exception as e:
                ls.load_error = f"zen-code-jax could not load its model: {e}"
                log.exception("load failed")
            loop.call_soon_threadsafe(done)

        def done() -> None:
            if progress is not None:
                msg = ls.load_error or "ready"
                progress.end(token, lsp.WorkDoneProgressEnd(message=msg))
            if ls.load_error:
                ls.window_show_message(lsp.ShowMessageParams(lsp.MessageType.Error, ls.load_error))
            ls.ready.set()

        threading.Thread(target=load, name="zen-lsp-load", daemon=True).start()

    @server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(
        ls: ZenLanguageServer, params: lsp.DidChangeConfigurationParams
    ) -> None:
        try:
            ls.settings = ls.settings.updated(params.settings)
        except ValueError as e:
            ls.window_show_message(lsp.ShowMessageParams(lsp.MessageType.Error, str(e)))

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: ZenLanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
        d = params.text_document
        ls.docs[d.uri] = tx.Document(d.uri, d.text, d.version, d.language_id)
        ls.edits[d.uri] = ls.edits.get(d.uri, 0) + 1

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: ZenLanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
        doc = ls.docs.get(params.text_document.uri)
        if doc is None:
            return
        enc = ls.encoding
        for ch in params.content_changes:
            if isinstance(ch, lsp.TextDocumentContentChangePartial):
                r = ch.range
                doc.apply(
                    (r.start.line, r.start.character), (r.end.line, r.end.character), ch.text, enc
                )
            else:
                doc.apply(None, None, ch.text, enc)
        doc.version = params.text_document.version
        ls.edits[doc.uri] = ls.edits.get(doc.uri, 0) + 1
        ls.ws.touch(doc.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: ZenLanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
        ls.docs.pop(params.text_document.uri, None)
        ls.ws.edited.pop(params.text_document.uri, None)

    @server.feature(lsp.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.InlineCompletionOptions())
    async def inline_completion(
        ls: ZenLanguageServer, params: lsp.InlineCompletionParams
    ) -> lsp.InlineCompletionList | None:
        text = await ls.complete_at(
            params.text_document.uri, params.position, lsp.TEXT_DOCUMENT_INLINE_COMPLETION
        )
        if not text:
            return lsp.InlineCompletionList(items=[])
        item = lsp.InlineCompletionItem(insert_text=text, range=_range_at(params.position))
        return lsp.InlineCompletionList(items=[item])

    @server.feature(
        lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[".", "(", " "])
    )
    async def completion(ls: ZenLanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
        if not ls.completion_items_wanted():
            return lsp.CompletionList(is_incomplete=True, items=[])
        text = await ls.complete_at(
            params.text_document.uri, params.position, lsp.TEXT_DOCUMENT_COMPLETION
        )
        if not text:
            return lsp.CompletionList(is_incomplete=True, items=[])
        first = text.splitlines()[0] if text.strip() else text
        item = lsp.CompletionItem(
            label=(first.strip() or text.strip())[:60],
            kind=lsp.CompletionItemKind.Text,
            detail="zen-code-jax",
            filter_text="",
            sort_text="0",
            text_edit=lsp.TextEdit(range=_range_at(params.position), new_text=text),
        )
        return lsp.CompletionList(is_incomplete=True, items=[item])

    @server.feature(PROMPT_METHOD)
    async def prompt(ls: ZenLanguageServer, params: Any) -> dict[str, Any]:
        await ls.ready.wait()
        pos = lsp.Position(line=params.position.line, character=params.position.character)
        req, _, multi = ls.build_request(params.textDocument.uri, pos)
        return {
            "ids": ls.backend.prompt_ids(req),
            "context": [p for p, _ in req.context],
            "path": req.path,
            "prefix": req.prefix,
            "suffix": req.suffix,
            "multiline": multi,
            "maxTokens": req.max_tokens,
        }

    @server.feature(STATS_METHOD)
    def stats(ls: ZenLanguageServer, params: Any) -> dict[str, float]:
        return dict(ls.backend.stats)

    @server.feature(lsp.SHUTDOWN)
    async def shutdown(ls: ZenLanguageServer, params: Any) -> None:
        await ls.backend.close()

    return server
