"""Repository formats: how the files of one repository become tokens, for training and serving.

One implementation for both sides: `repo_window.repo_windows` (training windows) and
`infer.engine.InferenceEngine.fim_prompt_ids` (serving prompts) both build their tokens from
`RepoFormat`, so a repository-level prompt is token for token what training showed the
model up to where the middle starts. `data.repo_format` chooses one:

  report      the Zen-Code report's listing: `{comment} File: {path}\\n{content}\\n` per
              file, with the comment syntax of the file's language (`# File:` for Python,
              `// File:` for C-family, `-- File:` for SQL/Haskell/Lua, ...): in C a line
              starting with `#` is a preprocessor directive, not a comment.
  qwen2.5     Qwen2.5-Coder's: `<|repo_name|>{repo}\\n` then `<|file_sep|>{path}\\n{content}\\n`
              per file.
  starcoder2  StarCoder2's: `<repo_name>{repo}` then `<file_sep>{path}\\n{content}` per file
              (our tokenizer's `<|repo_name|>` / `<|file_sep|>` ids play those roles).

Every format has the same FIM layout (Qwen2.5-Coder's repository-level FIM): the context
files come first as plain text, then the target file's header, and only the target file's
content is split and rearranged, so the FIM sentinels sit inside the target file:

  PSM: {repo}{context files}{target header}<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M
  SPM: {repo}{context files}{target header}<|fim_prefix|><|fim_suffix|>S<|fim_middle|>PM

With `data.repo_prefix` on (`RepoPrefix`), a window opens, after the repository opening,
with the paths of its files in window order and ("paths+symbols") a symbol table of each
context file (`data/symbols.py`: signatures of top-level functions, classes and their
methods, constants), one line each, within `data.repo_prefix_tokens` tokens:

  report      `# Path: a.py` ... `# Symbols: a.py` / `#   def f(x) -> int` (each line in the
              comment syntax of the file it describes: `// Path: b.c`)
  qwen2.5,    `Path: a.py` ... `Symbols: a.py` / `  def f(x) -> int` (plain lines after the
  starcoder2  `<|repo_name|>` opening; the `<|file_sep|>` of the first file ends them)

Each line is encoded on its own and lines are kept in order while they fit the budget, so
the prefix is a pure function of (format, paths, context files, budget): training windows
(`repo_window`), evaluation prompts and the engine's prompts (`open_ids`) are equal token
for token. The target's own symbols are never listed (they would give its middle away);
a file without a table (no grammar, a syntax error) keeps its path line, and is counted in
`prefix_stats()`.

A file is `header_ids(path)` followed by `encode(content + trailer)`, each encoded on its
own: the header never merges with the content's first token, so the FIM prefix of the
target starts on a token boundary in training and serving alike. Token ids of the
repository sentinels come from the tokenizer (`Tokenizer.repo_name_id` / `file_sep_id`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from zen_code_jax.data.fim import fim_prompt_tokens
from zen_code_jax.data.languages import language_of
from zen_code_jax.data.spans import span_stats
from zen_code_jax.data.symbols import PARSED, SymbolTable, symbol_table

REPO_FORMATS: tuple[str, ...] = ("report", "qwen2.5", "starcoder2")
PREFIX_MODES: tuple[str, ...] = ("none", "paths", "paths+symbols")
log = logging.getLogger(__name__)

# The report format's header comment per language: (opening, closing). A language missing
# here (and a path with no known language) gets "#", the report's own listing.
_SLASH = ("//", "")
_HASH = ("#", "")
_DASH = ("--", "")
_XML = ("<!--", " -->")
COMMENT_SYNTAX: dict[str, tuple[str, str]] = {
    **{
        lang: _SLASH
        for lang in (
            "C/C++",
            "Java",
            "JavaScript",
            "TypeScript",
            "Go",
            "Rust",
            "C#",
            "Kotlin",
            "Scala",
            "Swift",
            "Objective-C",
            "Dart",
            "PHP",
            "F#",
            "Zig",
            "Verilog",
            "Protocol Buffer",
            "Thrift",
            "Jupyter Notebook",
        )
    },  # fmt: skip
    **{
        lang: _HASH
        for lang in (
            "Python",
            "Shell",
            "Ruby",
            "Perl",
            "R",
            "Julia",
            "Elixir",
            "Nim",
            "PowerShell",
            "Makefile",
            "CMake",
            "Dockerfile",
            "YAML",
            "TOML",
            "GraphQL",
        )
    },  # fmt: skip
    **{lang: _DASH for lang in ("SQL", "Haskell", "Lua", "Lean", "VHDL")},
    **{lang: _XML for lang in ("HTML", "XML", "Markdown", "Vue", "Svelte")},
    "CSS": ("/*", " */"),
    "OCaml": ("(*", " *)"),
    "Isabelle": ("(*", " *)"),
    "TLA+": ("\\*", ""),
    "Erlang": ("%", ""),
    "TeX": ("%", ""),
    "Clojure": (";", ""),
    "Assembly": (";", ""),
    "Fortran": ("!", ""),
    "INI": (";", ""),
    "Batchfile": ("REM", ""),
    "reStructuredText": ("..", ""),
    "AsciiDoc": ("//", ""),
}


def comment_header(path: str) -> str:
    """The report format's header line of `path`: `# File: a.py\\n`, `// File: a.c\\n`, ..."""
    open_, close = COMMENT_SYNTAX.get(language_of(path) or "", _HASH)
    return f"{open_} File: {path}{close}\n"


def check_format(name: str) -> str:
    if name not in REPO_FORMATS:
        raise ValueError(
            f"Unknown data.repo_format {name!r}; set data.repo_format to one of {REPO_FORMATS}."
        )
    return name


# Symbol tables built in this process, by parse outcome (`symbols.STATUSES`): how many
# context files fell back to their path alone. Read with `prefix_stats()`.
_STATS: collections.Counter[str] = collections.Counter()


def prefix_stats() -> dict[str, int]:
    """Symbol tables built in this process by outcome (parsed / syntax_error / unsupported)."""
    return dict(_STATS)


_UNITS_PER_LOG = 2000  # units (files, repositories) between two logs, per process
_units = 0


def log_parse_outcomes(what: str) -> None:
    """Called once per unit: every _UNITS_PER_LOG, log how symbol tables and `ast` spans
    parsed in this process, so fallbacks (path-only tables, character spans) are visible."""
    global _units
    _units += 1
    if _units % _UNITS_PER_LOG == 0:
        log.info("%s %d: symbol tables %s, ast spans %s", what, _units, dict(_STATS), span_stats())


_TABLES: collections.OrderedDict[tuple[str, bytes], SymbolTable] = collections.OrderedDict()
_TABLES_KEPT = 1024  # recent tables kept per process (keyed by a digest, not the content)


def _table(path: str, content: str) -> SymbolTable:
    """`symbol_table`, once per (path, content): a window is re-measured for each piece it
    considers, and a server sees the same context files again and again."""
    key = (path, hashlib.blake2b(content.encode("utf-8"), digest_size=16).digest())
    table = _TABLES.get(key)
    if table is not None:
        _TABLES.move_to_end(key)
        return table
    table = symbol_table(path, content)
    _STATS[table.status] += 1
    _TABLES[key] = table
    if len(_TABLES) > _TABLES_KEPT:
        _TABLES.popitem(last=False)
    return table


@dataclasses.dataclass(frozen=True)
class RepoPrefix:
    """`data.repo_prefix` (mode) and `data.repo_prefix_tokens` (its budget in tokens)."""

    mode: str = "none"
    tokens: int = 256

    def __post_init__(self) -> None:
        if self.mode not in PREFIX_MODES:
            raise ValueError(
                f"Unknown data.repo_prefix {self.mode!r}; set it to one of {PREFIX_MODES}."
            )
        if self.tokens < 1:
            raise ValueError(f"data.repo_prefix_tokens={self.tokens} must be >= 1.")

    @property
    def reserve(self) -> int:
        """Tokens a window keeps free for the prefix (0 when off)."""
        return 0 if self.mode == "none" else self.tokens

    @classmethod
    def from_config(cls, data_cfg: Any) -> RepoPrefix:
        """From a config's `data` group (an older run's config without the keys: off)."""
        mode = str(data_cfg.get("repo_prefix", "none") or "none")
        return cls(mode, int(data_cfg.get("repo_prefix_tokens", 256)))


@dataclasses.dataclass(frozen=True)
class RepoFormat:
    """The token layout of one repository format (see the module docstring)."""

    name: str = "report"
    prefix: RepoPrefix = RepoPrefix()

    def __post_init__(self) -> None:
        check_format(self.name)

    def _prefix_line(self, path: str, text: str) -> str:
        if self.name != "report":
            return f"{text}\n"
        open_, close = COMMENT_SYNTAX.get(language_of(path) or "", _HASH)
        return f"{open_} {text}{close}\n"

    def prefix_lines(
        self, paths: Sequence[str], context: Sequence[tuple[str, str]], target: str | None
    ) -> list[str]:
        """The prefix's text lines: every path (window order), then the context files'
        symbol tables ("paths+symbols"; never the target's). [] when off."""
        return list(self._iter_prefix_lines(paths, context, target))

    def _iter_prefix_lines(
        self, paths: Sequence[str], context: Sequence[tuple[str, str]], target: str | None
    ) -> Iterator[str]:
        """`prefix_lines`, lazily (the budget usually stops well before the end)."""
        if self.prefix.mode == "none":
            return
        for p in dict.fromkeys(paths):
            yield self._prefix_line(p, f"Path: {p}")
        if self.prefix.mode == "paths+symbols":
            for path, content in dict(context).items():
                table = _table(path, content)
                if path == target or table.status != PARSED or not table.symbols:
                    continue
                yield self._prefix_line(path, f"Symbols: {path}")
                for x in table.lines():
                    yield self._prefix_line(path, f"  {x}")

    def prefix_ids(
        self,
        paths: Sequence[str],
        context: Sequence[tuple[str, str]],
        tok: Any,
        target: str | None = None,
    ) -> list[int]:
        """The prefix's tokens: lines encoded one by one, kept in order while the total
        fits `prefix.tokens` (so every caller cuts it at the same line)."""
        out: list[int] = []
        for line in self._iter_prefix_lines(paths, context, target):
            ids = tok.encode(line)
            if len(out) + len(ids) > self.prefix.tokens:
                break
            out.extend(ids)
        return out

    def open_ids(
        self,
        files: Sequence[tuple[str, str]],
        tok: Any,
        repo: str | None = None,
        target: str | None = None,
    ) -> list[int]:
        """What opens a window or prompt: the repository opening, then the prefix over the
        context `files` [(path, content)] and the `target` path (listed last)."""
        paths = [p for p, _ in files] + ([target] if target is not None else [])
        return [*self.repo_ids(repo, tok), *self.prefix_ids(paths, files, tok, target)]

    def repo_ids(self, repo: str | None, tok: Any) -> list[int]:
        """Tokens that open a repository (and every window of it); [] for `report` or no name."""
        if self.name == "report" or repo is None:
            return []
        text = f"{repo}\n" if self.name == "qwen2.5" else repo
        return [tok.repo_name_id, *tok.encode(text)]

    def header_ids(self, path: str, tok: Any) -> list[int]:
        """Tokens that introduce a file (repeated on each piece of a long file)."""
        if self.name == "report":
            return tok.encode(comment_header(path))
        return [tok.file_sep_id, *tok.encode(f"{path}\n")]

    def trailer(self) -> str:
        """Text after a file's content: a newline, except in StarCoder2's format."""
        return "" if self.name == "starcoder2" else "\n"

    def file_ids(self, path: str, content: str, tok: Any) -> list[int]:
        """One whole context file: header, then content + trailer."""
        return [*self.header_ids(path, tok), *tok.encode(content + self.trailer())]

    def context_ids(
        self,
        files: Sequence[tuple[str, str]],
        tok: Any,
        repo: str | None = None,
        target: str | None = None,
    ) -> list[int]:
        """The window's opening (`open_ids`) and the files [(path, content), ...] before
        the target `target`."""
        out = self.open_ids(files, tok, repo, target)
        for path, content in files:
            out.extend(self.file_ids(path, content, tok))
        return out

    def fim_prompt_ids(
        self,
        files: Sequence[tuple[str, str]],
        path: str,
        prefix: str,
        suffix: str,
        mode: str,
        tok: Any,
        repo: str | None = None,
    ) -> list[int]:
        """Serving prompt: context files, target header, then FIM over the target's text.

        `suffix` is the rest of the target file; the trailer the training text had (the
        newline after the content) is added to it, so the prompt matches training.
        """
        head = [*self.context_ids(files, tok, repo, path), *self.header_ids(path, tok)]
        return [*head, *fim_prompt_tokens(prefix, suffix + self.trailer(), mode, tok)]

    def lm_prompt_ids(
        self,
        files: Sequence[tuple[str, str]],
        path: str,
        prefix: str,
        tok: Any,
        repo: str | None = None,
    ) -> list[int]:
        """Left-to-right prompt: context files, target header, the target's first text."""
        head = [*self.context_ids(files, tok, repo, path), *self.header_ids(path, tok)]
        return [*head, *tok.encode(prefix)]
