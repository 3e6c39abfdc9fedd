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

A file is `header_ids(path)` followed by `encode(content + trailer)`, each encoded on its
own: the header never merges with the content's first token, so the FIM prefix of the
target starts on a token boundary in training and serving alike. Token ids of the
repository sentinels come from the tokenizer (`Tokenizer.repo_name_id` / `file_sep_id`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from zen_code_jax.data.fim import fim_prompt_tokens
from zen_code_jax.data.languages import language_of

REPO_FORMATS: tuple[str, ...] = ("report", "qwen2.5", "starcoder2")

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


@dataclasses.dataclass(frozen=True)
class RepoFormat:
    """The token layout of one repository format (see the module docstring)."""

    name: str = "report"

    def __post_init__(self) -> None:
        check_format(self.name)

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
        self, files: Sequence[tuple[str, str]], tok: Any, repo: str | None = None
    ) -> list[int]:
        """The repository opening and the files [(path, content), ...] before a target."""
        out = self.repo_ids(repo, tok)
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
        head = [*self.context_ids(files, tok, repo), *self.header_ids(path, tok)]
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
        head = [*self.context_ids(files, tok, repo), *self.header_ids(path, tok)]
        return [*head, *tok.encode(prefix)]
