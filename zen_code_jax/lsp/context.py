"""Repository context for a completion: imported files and recently edited documents.

The model was trained on repository windows (`data/repo_window.py`): dependency files first
(`data/import_graph.order_files`), then the target file, laid out by the run's repository
format (`data/repo_format.RepoFormat`). A completion prompt is built the same way, so for
the same files it is the training window token for token up to where the middle starts:

1. candidates, most useful first: the files the current file imports (resolved over the
   workspace folder by `data/import_graph.build_import_graph`, the data side's resolver),
   then the most recently edited other open documents;
2. taken whole while they fit the token budget (a file that does not fit is skipped, a
   smaller later one may still fit): a context file is never cut, as in training, where a
   file is split only when it is longer than a whole window;
3. laid out in the pipeline's order (`order_files` over the chosen files and the target,
   the target last).

Paths are relative to the workspace folder with `/` separators, as repository paths are
in the corpus.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from zen_code_jax.data.import_graph import build_import_graph, language_of, order_files

SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", "build"}
MAX_FILE_BYTES = 256 * 1024  # a bigger file is data, not context
MAX_INDEXED = 20000  # workspace paths indexed for import resolution
REINDEX_S = 10.0  # re-walk the workspace at most this often (files come and go)


def uri_to_path(uri: str) -> Path | None:
    """The local path of a `file://` URI (None for other schemes: untitled buffers)."""
    u = urlparse(uri)
    if u.scheme != "file":
        return None
    return Path(unquote(u.path))


@dataclasses.dataclass(frozen=True)
class RepoContext:
    """What a prompt puts before the target: files [(path, content)] in order, the target's
    path (None outside the workspace folder) and the repository's name."""

    files: list[tuple[str, str]]
    path: str | None
    repo: str | None


class Workspace:
    """The workspace folder's source paths (for import resolution) and recent edits."""

    def __init__(self, root: Path | None):
        self.root = root.resolve() if root is not None else None
        self._paths: list[str] | None = None
        self._indexed_at = 0.0
        self._cache: dict[str, tuple[float, str]] = {}
        self.edited: dict[str, float] = {}  # uri -> time of the last edit

    @property
    def repo(self) -> str | None:
        return self.root.name if self.root is not None else None

    def relpath(self, uri: str) -> str | None:
        """`uri`'s path relative to the root (`/`-separated); None outside the root."""
        p = uri_to_path(uri)
        if p is None or self.root is None:
            return None
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def paths(self) -> list[str]:
        """Source paths under the root that the import graph knows (re-walked at most
        every `REINDEX_S` seconds, so new files are found)."""
        if self._paths is None or time.monotonic() - self._indexed_at > REINDEX_S:
            self._indexed_at = time.monotonic()
            out: list[str] = []
            if self.root is not None:
                for dirpath, dirs, files in os.walk(self.root):
                    dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and d[0] != ".")
                    for f in sorted(files):
                        if language_of(f) is not None or f == "go.mod":
                            out.append((Path(dirpath) / f).relative_to(self.root).as_posix())
                    if len(out) >= MAX_INDEXED:
                        break
            self._paths = out[:MAX_INDEXED]
        return self._paths

    def read(self, rel: str) -> str | None:
        """A workspace file's text from disk (cached by mtime); None if unreadable or huge."""
        assert self.root is not None
        p = self.root / rel
        try:
            st = p.stat()
            if st.st_size > MAX_FILE_BYTES:
                return None
            hit = self._cache.get(rel)
            if hit is not None and hit[0] == st.st_mtime:
                return hit[1]
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        self._cache[rel] = (st.st_mtime, text)
        return text

    def touch(self, uri: str) -> None:
        self.edited[uri] = time.monotonic()

    def imports_of(self, rel: str, text: str) -> list[str]:
        """Workspace paths the file `rel` (with content `text`) imports, sorted."""
        files = {p: "" for p in self.paths()}
        for p in files:
            if p.endswith("go.mod"):
                files[p] = self.read(p) or ""
        files[rel] = text
        return sorted(build_import_graph(files).get(rel, ()))


def select_context(
    ws: Workspace,
    uri: str,
    text: str,
    open_docs: Mapping[str, str],
    budget: int,
    count: Callable[[str, str], int],
    recent: int = 3,
    opening: Callable[[list[tuple[str, str]]], int] | None = None,
    reserve: int | None = None,
) -> RepoContext:
    """The context files for completing `uri` (current content `text`) within `budget`.

    open_docs: {uri: text} of the open documents (their unsaved text wins over the disk);
    count(path, content): tokens a context file takes in the prompt; recent: how many
    recently edited other documents may join the imported files.

    opening(files): exact tokens of the prompt's opening for these context files in
    prompt order (`RepoFormat.open_ids`: with `data.repo_prefix` on, their paths and
    symbol tables). The prefix depends on the choice (and order) of the files, so each
    candidate is priced with the exact opening of the chosen files plus it, laid out as
    the prompt will be: what the files cost is their tokens plus how much they grow the
    opening over no file, and the files finally chosen are the last set that fitted.
    None (prefix off): the files' tokens alone, as before the prefix existed. reserve:
    the prefix's budget, an upper bound of how much any files grow the opening: a
    candidate that fits with it is taken without pricing (the same choice, sooner);
    None: every candidate is priced.
    """
    rel = ws.relpath(uri)
    if rel is None:
        return RepoContext([], None, ws.repo)
    by_rel = {r: t for u, t in open_docs.items() if (r := ws.relpath(u)) is not None}
    candidates: list[str] = []
    for dep in ws.imports_of(rel, text):
        candidates.append(dep)
    others = sorted(
        (u for u in open_docs if u != uri and u in ws.edited),
        key=lambda u: -ws.edited[u],
    )
    for u in others[:recent]:
        r = ws.relpath(u)
        if r is not None and r not in candidates and r != rel:
            candidates.append(r)
    chosen: dict[str, str] = {}
    left = budget
    used = 0  # tokens of the chosen files (prefix on)
    bare = opening([]) if opening is not None else 0
    for r in candidates:
        content = by_rel[r] if r in by_rel else ws.read(r)
        if content is None:
            continue
        n = count(r, content)
        if opening is None:
            if n <= left:
                chosen[r] = content
                left -= n
            continue
        trial = {**chosen, r: content}
        if (reserve is not None and used + n + reserve <= budget) or (
            used + n + opening(_in_order(trial, rel, text)) - bare <= budget
        ):
            chosen, used = trial, used + n
    return RepoContext(_in_order(chosen, rel, text), rel, ws.repo)


def _in_order(chosen: Mapping[str, str], rel: str, text: str) -> list[tuple[str, str]]:
    """The chosen context files in the pipeline's order (dependencies first), without the
    target `rel` (content `text`), which comes last."""
    return [(p, chosen[p]) for p in order_files({**chosen, rel: text}) if p != rel]


def trim_around_cursor(
    prefix: str, suffix: str, max_prefix: int, max_suffix: int
) -> tuple[str, str]:
    """At most `max_prefix` characters before and `max_suffix` after the cursor, cut at line
    starts (a long file's far-away text costs latency and tokens, and helps little)."""
    if len(prefix) > max_prefix:
        cut = prefix.find("\n", len(prefix) - max_prefix)
        prefix = prefix[cut + 1 :] if cut >= 0 else prefix[-max_prefix:]
    if len(suffix) > max_suffix:
        cut = suffix.rfind("\n", 0, max_suffix)
        suffix = suffix[: cut + 1] if cut >= 0 else suffix[:max_suffix]
    return prefix, suffix


def estimate_tokens(path: str, content: str) -> int:
    """A conservative token count without a tokenizer (remote backends): ~3 chars a token."""
    return (len(path) + len(content)) // 3 + 8


def as_pairs(files: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"path": p, "content": c} for p, c in files]
