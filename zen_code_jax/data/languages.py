"""Language and domain of a source file, from its extension, file name or shebang.

Language names follow the report's Table 3 for its top ten (Python, JavaScript, TypeScript,
Java, C/C++, Rust, Go, Ruby, PHP, Shell) so `data.language_weights` keys read like the table;
C and C++ share one name as in the table. Domains follow Table 2 where a file can tell:
`code` for programming and configuration languages, `docs` for technical documentation,
`formal` for formal specifications (Lean, TLA+, Isabelle, Coq). Other domains (Q&A, papers, web,
synthetic tests) only come from JSONL/Parquet rows that carry a `domain` field.
"""

from __future__ import annotations

import posixpath
import re

TOP_TEN = (
    "Python",
    "JavaScript",
    "TypeScript",
    "Java",
    "C/C++",
    "Rust",
    "Go",
    "Ruby",
    "PHP",
    "Shell",
)

DOMAINS = ("code", "docs", "qa", "papers", "web", "formal", "synthetic")

_EXT: dict[str, str] = {}


def _add(lang: str, *exts: str) -> None:
    for e in exts:
        _EXT[e] = lang


_add("Python", ".py", ".pyi", ".pyw", ".pyx", ".pxd", ".pxi")
_add("JavaScript", ".js", ".mjs", ".cjs", ".jsx")
_add("TypeScript", ".ts", ".tsx", ".mts", ".cts")
_add("Java", ".java")
_add("C/C++", ".c", ".h", ".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++", ".inl")
_add("C/C++", ".ipp", ".tcc", ".cu", ".cuh")
_add("Rust", ".rs")
_add("Go", ".go")
_add("Ruby", ".rb", ".rake", ".gemspec")
_add("PHP", ".php", ".phtml")
_add("Shell", ".sh", ".bash", ".zsh", ".ksh", ".fish")
_add("C#", ".cs")
_add("Kotlin", ".kt", ".kts")
_add("Scala", ".scala", ".sc")
_add("Swift", ".swift")
_add("Objective-C", ".m", ".mm")
_add("Dart", ".dart")
_add("Lua", ".lua")
_add("Perl", ".pl", ".pm")
_add("R", ".r", ".R")
_add("Julia", ".jl")
_add("Haskell", ".hs", ".lhs")
_add("OCaml", ".ml", ".mli")
_add("F#", ".fs", ".fsi", ".fsx")
_add("Elixir", ".ex", ".exs")
_add("Erlang", ".erl", ".hrl")
_add("Clojure", ".clj", ".cljs", ".cljc", ".edn")
_add("Zig", ".zig")
_add("Nim", ".nim")
_add("Fortran", ".f", ".f90", ".f95", ".f03", ".for")
_add("Assembly", ".s", ".S", ".asm")
_add("Verilog", ".sv", ".svh")  # `.v` is Verilog or Coq: decided from the content below
_add("VHDL", ".vhd", ".vhdl")
_add("SQL", ".sql")
_add("PowerShell", ".ps1", ".psm1")
_add("Batchfile", ".bat", ".cmd")
_add("Makefile", ".mk", ".mak")
_add("CMake", ".cmake")
_add("Dockerfile", ".dockerfile")
_add("HTML", ".html", ".htm", ".xhtml")
_add("CSS", ".css", ".scss", ".sass", ".less")
_add("Vue", ".vue")
_add("Svelte", ".svelte")
_add("JSON", ".json")
_add("YAML", ".yaml", ".yml")
_add("TOML", ".toml")
_add("XML", ".xml", ".xsd", ".xsl")
_add("INI", ".ini", ".cfg")
_add("Protocol Buffer", ".proto")
_add("Thrift", ".thrift")
_add("GraphQL", ".graphql", ".gql")
_add("Jupyter Notebook", ".ipynb")
_add("Markdown", ".md", ".markdown")
_add("reStructuredText", ".rst")
_add("AsciiDoc", ".adoc", ".asciidoc")
_add("TeX", ".tex")
_add("Lean", ".lean")
_add("TLA+", ".tla")
_add("Isabelle", ".thy")

_FILENAMES = {
    "Makefile": "Makefile",
    "GNUmakefile": "Makefile",
    "makefile": "Makefile",
    "Dockerfile": "Dockerfile",
    "CMakeLists.txt": "CMake",
    "Rakefile": "Ruby",
    "Gemfile": "Ruby",
    "BUILD": "Starlark",
    "BUILD.bazel": "Starlark",
    "WORKSPACE": "Starlark",
    "README": "Markdown",
}
_add("Starlark", ".bzl", ".star")

_DOCS = {"Markdown", "reStructuredText", "AsciiDoc", "TeX"}
_FORMAL = {"Lean", "TLA+", "Isabelle", "Coq"}
# `.v` is shared by Verilog and Coq. Coq vernacular starts sentences with these commands and
# ends proofs with `Qed.`; Verilog has `module`/`endmodule`, `always`, `assign`, `wire`.
_COQ = re.compile(
    r"^\s*(?:Require|From\s+\S+\s+Require|Theorem|Lemma|Proof\.|Qed\.|Definition|Fixpoint"
    r"|Inductive|Module\s+Type|Section|Set\s+Implicit|Open\s+Scope|Ltac|Notation)\b",
    re.MULTILINE,
)
_VERILOG = re.compile(
    r"^\s*(?:module|endmodule|always|assign|wire|reg|input|output|`timescale)\b", re.M
)
AMBIGUOUS_EXTENSIONS = frozenset({".v"})
HEAD_CHARS = 4096  # how much of a file detection looks at (shebang: the first line only)

_SHEBANG = {
    "python": "Python",
    "python3": "Python",
    "python2": "Python",
    "sh": "Shell",
    "bash": "Shell",
    "zsh": "Shell",
    "ksh": "Shell",
    "dash": "Shell",
    "node": "JavaScript",
    "ruby": "Ruby",
    "perl": "Perl",
    "php": "PHP",
}

# The Stack's `lang` values (and common aliases), lower-cased, to our names.
_ALIASES = {
    "c": "C/C++",
    "c++": "C/C++",
    "cpp": "C/C++",
    "c/c++": "C/C++",
    "cuda": "C/C++",
    "shell": "Shell",
    "bash": "Shell",
    "sh": "Shell",
    "shell/bash": "Shell",
    "javascript": "JavaScript",
    "js": "JavaScript",
    "typescript": "TypeScript",
    "ts": "TypeScript",
    "python": "Python",
    "py": "Python",
    "c#": "C#",
    "c-sharp": "C#",
    "csharp": "C#",
    "objective-c": "Objective-C",
    "objective-c++": "Objective-C",
    "f#": "F#",
    "f-sharp": "F#",
    "protocol-buffer": "Protocol Buffer",
    "restructuredtext": "reStructuredText",
    "jupyter-notebook": "Jupyter Notebook",
    "coq": "Coq",
}
_CANON = {name.lower(): name for name in set(_EXT.values()) | set(_FILENAMES.values())}


def normalize_language(name: str) -> str:
    """Map a language name or alias (e.g. The Stack's `lang` column) to our spelling."""
    key = name.strip().lower()
    return _ALIASES.get(key) or _CANON.get(key) or name.strip()


def language_of(path: str, head: str | bytes = "") -> str | None:
    """The language of `path` (extension, then file name, then the `#!` line), or None."""
    base = posixpath.basename(path.replace("\\", "/"))
    if base in _FILENAMES:
        return _FILENAMES[base]
    stem, ext = posixpath.splitext(base)
    if ext in AMBIGUOUS_EXTENSIONS:
        return _coq_or_verilog(head) if head else None
    if ext:
        lang = _EXT.get(ext) or _EXT.get(ext.lower())
        if lang:
            return lang
    if isinstance(head, bytes):
        head = head[:200].decode("utf-8", "replace")
    if head.startswith("#!"):
        words = head[2:].split("\n", 1)[0].strip().split()
        if words:
            prog = posixpath.basename(words[0])
            if prog == "env" and len(words) > 1:
                prog = words[1]
            return _SHEBANG.get(prog.rstrip("0123456789.") or prog) or _SHEBANG.get(prog)
    return None


def _coq_or_verilog(head: str | bytes) -> str:
    if isinstance(head, bytes):
        head = head[:HEAD_CHARS].decode("utf-8", "replace")
    head = head[:HEAD_CHARS]
    coq, verilog = len(_COQ.findall(head)), len(_VERILOG.findall(head))
    return "Coq" if coq > verilog else "Verilog"


def needs_content(path: str) -> bool:
    """True when the extension alone cannot tell the language (`.v`: Coq or Verilog)."""
    return posixpath.splitext(path)[1] in AMBIGUOUS_EXTENSIONS


def domain_of(language: str) -> str:
    """Table 2 domain of a language: `docs`, `formal` or `code`."""
    if language in _DOCS:
        return "docs"
    if language in _FORMAL:
        return "formal"
    return "code"


def known_extensions() -> frozenset[str]:
    """Every file extension that maps to a language (for fast pre-filtering)."""
    return frozenset(_EXT)
