"""Corpus sources: list the files of a corpus as (repository, path) entries, or stream rows.

Four kinds (`data.source`):
- `stdlib` (default, needs nothing downloaded): the running interpreter's standard library
  (`sysconfig.get_paths()['stdlib']`; site-packages, lib-dynload, config-* and __pycache__
  skipped), Python files only. Each top-level package is one repository (`stdlib/json`,
  `stdlib/email`, `stdlib/test`, ...), paths keep the package folder (`json/decoder.py`) so
  imports resolve. Top-level single modules are grouped into repositories by the Python
  docs' chapter they belong to (`stdlib/text`, `stdlib/files`, `stdlib/net`, ...; see
  `STDLIB_FAMILIES`); a module in no family goes to `stdlib/misc`.
- `local`: `stdlib`, plus every installed distribution's files (importlib.metadata; one
  repository `pypi/<name>` each, paths as installed) and the system C/C++ headers
  (`/usr/include`: one repository `include/<subdir>` per subfolder, `include/libc` for the
  top-level headers). Every known language is kept.
- `dir` (`data.path`): each subfolder is one repository; files directly in the folder form
  the repository `_root`.
- `jsonl` / `parquet` (`data.path`, a file or a folder of `*.jsonl[.gz]` / `*.parquet`):
  rows in The Stack's layout: `max_stars_repo_name` or `repo_name` (or `repo`; a row
  without one is its own repository `_norepo/<hash of path and content>`),
  `max_stars_repo_path` or `path`, `content`, optional `lang` and `domain`.

Listing is cheap (names and `stat` only); reading and filtering happen in worker processes in
`prepare.py`. Path-only skip reasons (vendored, excluded tests, binary extensions, unknown
languages) are counted here without reading the file.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import stat
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zen_code_jax.data import filters
from zen_code_jax.data.languages import (
    HEAD_CHARS,
    domain_of,
    language_of,
    needs_content,
    normalize_language,
)

SOURCE_KINDS = ("stdlib", "local", "dir", "jsonl", "parquet")


class CorpusError(ValueError):
    """A missing or empty corpus, or input in an unexpected layout."""


@dataclasses.dataclass(frozen=True)
class FileRef:
    """One file on disk, as a member of a repository."""

    repo: str
    path: str  # posix path inside the repository
    location: str  # absolute path on disk
    size: int
    mtime_ns: int
    language: str | None  # None: decide from the shebang after reading


@dataclasses.dataclass
class Listing:
    """What a source holds: files on disk, or row files (JSONL/Parquet) to stream."""

    kind: str
    files: list[FileRef]
    row_inputs: list[str]
    path_skips: collections.Counter

    def signature(self) -> str:
        """sha256 over every listed name, size and mtime (the corpus part of the cache key)."""
        h = hashlib.sha256()
        h.update(self.kind.encode())
        for f in self.files:
            h.update(f"{f.repo}\0{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
        for p in self.row_inputs:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(json.dumps(sorted(self.path_skips.items())).encode())
        return h.hexdigest()


# --------------------------------------------------------------------------- stdlib families
# Python-docs chapters for the single top-level modules of the stdlib. Packages are their own
# repositories; anything not listed goes to `misc`.
STDLIB_FAMILIES: dict[str, tuple[str, ...]] = {
    "text": (
        "string textwrap difflib stringprep rlcompleter shlex tokenize token keyword "
        "sre_compile sre_constants sre_parse"
    ).split(),
    "binary": "struct codecs base64 quopri uu".split(),
    "datatypes": (
        "datetime calendar heapq bisect weakref _weakrefset types copy pprint reprlib enum "
        "graphlib dataclasses abc _py_abc _collections_abc typing"
    ).split(),
    "numeric": "numbers decimal _pydecimal fractions random statistics".split(),
    "functional": "functools operator contextlib contextvars".split(),
    "files": (
        "pathlib os posixpath ntpath genericpath stat filecmp tempfile glob fnmatch linecache "
        "shutil fileinput nturl2path"
    ).split(),
    "persistence": "pickle pickletools copyreg shelve _compat_pickle".split(),
    "archiving": "gzip bz2 lzma zipfile tarfile _compression zipapp zipimport".split(),
    "formats": "csv configparser netrc plistlib mimetypes mailcap mailbox xdrlib".split(),
    "crypto": "hashlib hmac secrets crypt".split(),
    "os": (
        "io _pyio argparse getopt optparse getpass platform locale gettext _strptime "
        "_osx_support _aix_support _bootsubprocess pipes"
    ).split(),
    "concurrency": (
        "threading _threading_local queue sched subprocess selectors signal socket ssl "
        "asyncore asynchat socketserver"
    ).split(),
    "net": (
        "smtplib smtpd poplib imaplib nntplib ftplib telnetlib uuid ipaddress webbrowser cgi "
        "cgitb _markupbase"
    ).split(),
    "devtools": (
        "pdb bdb cProfile profile pstats timeit trace tracemalloc doctest traceback warnings "
        "inspect dis ast symtable code codeop compileall py_compile pyclbr pydoc "
        "modulefinder runpy pkgutil imp site _sitebuiltins sysconfig __future__ opcode "
        "tabnanny"
    ).split(),
    "media": "aifc sunau wave chunk colorsys imghdr sndhdr turtle".split(),
    "tty": "tty pty cmd".split(),
}
_MODULE_FAMILY = {m: fam for fam, mods in STDLIB_FAMILIES.items() for m in mods}
_STDLIB_SKIP_TOP = ("site-packages", "dist-packages", "lib-dynload", "__pycache__")


def stdlib_root() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stat_ref(repo: str, path: str, loc: str | Path, language: str | None) -> FileRef | None:
    """A FileRef from one stat call; None for a missing or non-regular file."""
    try:
        st = os.stat(loc)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileRef(repo, path, str(loc), st.st_size, st.st_mtime_ns, language)


def _classify_path(
    rel: str, exclude_tests: bool, languages: frozenset[str] | None, skips: collections.Counter
) -> tuple[bool, str | None]:
    """(keep, language) from the path alone, counting the reason when not kept."""
    reason = filters.path_reason(rel, exclude_tests)
    if reason:
        skips[reason] += 1
        return False, None
    lang = language_of(rel)
    if lang is None and needs_content(rel) and languages is None:
        return True, None  # `.v`: Coq or Verilog, decided after reading
    if lang is None and "." in os.path.basename(rel):
        skips["unsupported_language"] += 1
        return False, None
    if lang is not None and languages is not None and lang not in languages:
        skips["unsupported_language"] += 1
        return False, None
    return True, lang


def _walk(root: Path, skip_top: tuple[str, ...] = ()) -> Iterator[tuple[Path, str]]:
    """(absolute path, posix path relative to root) of every file, sorted, .git etc. pruned.

    Top-level folders named in `skip_top` (or starting with "config-" when given) are pruned.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", ".hg", ".svn", "__pycache__"))
        if skip_top and dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip_top and not d.startswith("config-")]
        base = Path(dirpath)
        rel_dir = base.relative_to(root).as_posix()
        for name in sorted(filenames):
            p = base / name
            if p.is_symlink():
                continue
            yield p, (name if rel_dir == "." else f"{rel_dir}/{name}")


def list_stdlib(exclude_tests: bool, skips: collections.Counter) -> list[FileRef]:
    """The stdlib as repositories (see module docstring); Python files only."""
    root = stdlib_root()
    out: list[FileRef] = []
    only_py = frozenset({"Python"})
    for p, rel in _walk(root, _STDLIB_SKIP_TOP):
        top = rel.split("/", 1)[0]
        keep, lang = _classify_path(rel, exclude_tests, only_py, skips)
        if not keep:
            continue
        if lang is None:  # no extension: not a module
            skips["unsupported_language"] += 1
            continue
        if "/" in rel:
            repo = f"stdlib/{top}"
        else:
            mod = rel.rsplit(".", 1)[0]
            if mod.startswith("_sysconfigdata"):
                repo = "stdlib/devtools"
            else:
                repo = f"stdlib/{_MODULE_FAMILY.get(mod, 'misc')}"
        _append(out, _stat_ref(repo, rel, p, lang))
    return out


def _append(out: list[FileRef], ref: FileRef | None) -> None:
    if ref is not None:
        out.append(ref)


def _dist_name(dist: importlib.metadata.Distribution) -> str:
    name = dist.metadata["Name"] or ""
    return name.strip().lower().replace("_", "-")


def _dist_paths(dist: importlib.metadata.Distribution) -> list[str]:
    """Installed file paths of a distribution (RECORD read directly: `dist.files` builds a
    PackagePath per line and is 10x slower), sorted."""
    record = dist.read_text("RECORD")
    if record is None:
        return sorted(f.as_posix() for f in dist.files or [])
    return sorted({row[0] for row in csv.reader(record.splitlines()) if row and row[0]})


def list_distributions(
    exclude_tests: bool, skips: collections.Counter, search_path: list[str] | None = None
) -> list[FileRef]:
    """Every installed distribution's source files, one repository `pypi/<name>` each.

    `search_path` (default: sys.path) is where importlib.metadata looks for distributions.
    """
    out: list[FileRef] = []
    seen: set[str] = set()
    found = (
        importlib.metadata.distributions(path=search_path)
        if search_path is not None
        else importlib.metadata.distributions()
    )
    for dist in sorted(found, key=_dist_name):
        name = _dist_name(dist)
        if not name or name in seen:
            continue
        rels = _dist_paths(dist)
        if not rels:
            continue
        seen.add(name)
        base = str(dist.locate_file(""))
        for rel in rels:
            if rel.startswith("..") or ".dist-info/" in rel or ".egg-info/" in rel:
                continue
            if "__pycache__/" in rel:  # bytecode caches are build artifacts, not sources
                continue
            keep, lang = _classify_path(rel, exclude_tests, None, skips)
            if not keep or lang is None:
                if keep:
                    skips["unsupported_language"] += 1
                continue
            _append(out, _stat_ref(f"pypi/{name}", rel, os.path.join(base, rel), lang))
    return out


def list_headers(root: Path, exclude_tests: bool, skips: collections.Counter) -> list[FileRef]:
    """System C/C++ headers: `include/<subdir>` per subfolder, `include/libc` for the rest."""
    out: list[FileRef] = []
    if not root.is_dir():
        return out
    for p, rel in _walk(root):
        keep, lang = _classify_path(rel, exclude_tests, None, skips)
        if not keep:
            continue
        if lang is None:
            lang = "C/C++"  # extensionless C++ standard headers (<vector>, <map>, ...)
        top = rel.split("/", 1)[0]
        repo = f"include/{top}" if "/" in rel else "include/libc"
        _append(out, _stat_ref(repo, rel, p, lang))
    return out


def list_directory(root: Path, exclude_tests: bool, skips: collections.Counter) -> list[FileRef]:
    """Each subfolder of `root` is one repository; loose files form `_root`."""
    out: list[FileRef] = []
    for p, rel in _walk(root):
        top, _, inner = rel.partition("/")
        repo, path = (top, inner) if inner else ("_root", rel)
        keep, lang = _classify_path(path, exclude_tests, None, skips)
        if keep:
            _append(out, _stat_ref(repo, path, p, lang))
    return out


def _row_inputs(path: Path, kind: str) -> list[str]:
    patterns = (
        ("*.jsonl", "*.jsonl.gz", "*.json.gz", "*.ndjson") if kind == "jsonl" else ("*.parquet",)
    )
    if path.is_file():
        return [str(path)]
    files = sorted({str(p) for pat in patterns for p in path.rglob(pat)})
    if not files:
        raise CorpusError(
            f"data.path={str(path)!r} holds no {kind} files (looked for {', '.join(patterns)}). "
            f"Point data.path at a {kind} file or a folder of them."
        )
    return files


def list_corpus(data_cfg: Any) -> Listing:
    """List a corpus from the `data` config group (source, path, exclude_tests)."""
    kind = str(data_cfg.source)
    if kind not in SOURCE_KINDS:
        raise CorpusError(
            f"Unknown data.source {kind!r}. Valid sources: {', '.join(SOURCE_KINDS)}."
        )
    exclude_tests = bool(data_cfg.exclude_tests)
    skips: collections.Counter = collections.Counter()
    files: list[FileRef] = []
    rows: list[str] = []
    if kind in ("dir", "jsonl", "parquet"):
        if not str(data_cfg.path):
            raise CorpusError(
                f"data.source={kind!r} needs data.path: set data.path to the "
                f"{'folder of repositories' if kind == 'dir' else kind + ' file or folder'}."
            )
        path = Path(str(data_cfg.path)).expanduser()
        if not path.exists():
            raise CorpusError(
                f"data.path={str(path)!r} does not exist. Set data.path to an existing "
                f"{'folder' if kind == 'dir' else kind + ' file or folder'}, or use "
                "data.source='stdlib' for the embedded default corpus."
            )
        if kind == "dir":
            if not path.is_dir():
                raise CorpusError(
                    f"data.source='dir' needs a folder, but data.path={str(path)!r} is a file."
                )
            files = list_directory(path, exclude_tests, skips)
        else:
            rows = _row_inputs(path, kind)
    else:
        files = list_stdlib(exclude_tests, skips)
        if kind == "local":
            files += list_distributions(exclude_tests, skips)
            files += list_headers(Path("/usr/include"), exclude_tests, skips)
    files.sort(key=lambda f: (f.repo, f.path))
    max_files = int(data_cfg.max_files or 0)
    if max_files and len(files) > max_files:
        # A deterministic sample across repositories: the files with the smallest hash.
        ranked = sorted(files, key=lambda f: hashlib.sha256(f"{f.repo}/{f.path}".encode()).digest())
        chosen = {(f.repo, f.path) for f in ranked[:max_files]}
        skips["max_files"] += len(files) - max_files
        files = [f for f in files if (f.repo, f.path) in chosen]
    max_bytes = int(getattr(data_cfg, "max_bytes", 0) or 0)
    if max_bytes and sum(f.size for f in files) > max_bytes:
        # Same hash ranking, cut where the running size would pass the cap: a corpus sized
        # to a time budget (the gpu scale), still a deterministic sample across repositories.
        ranked = sorted(files, key=lambda f: hashlib.sha256(f"{f.repo}/{f.path}".encode()).digest())
        chosen, total = set(), 0
        for f in ranked:
            if total + f.size > max_bytes:
                continue
            chosen.add((f.repo, f.path))
            total += f.size
        skips["max_bytes"] += len(files) - len(chosen)
        files = [f for f in files if (f.repo, f.path) in chosen]
    if not files and not rows:
        where = f" at {data_cfg.path!r}" if str(data_cfg.path) else ""
        raise CorpusError(
            f"The {kind!r} corpus{where} has no usable files (skipped by path: "
            f"{dict(skips) or 'none'}). Point data.path at source code, or relax "
            "data.exclude_tests / data.max_file_bytes."
        )
    return Listing(kind, files, rows, skips)


# --------------------------------------------------------------------------- row files
_REPO_KEYS = ("max_stars_repo_name", "repo_name", "repo")
_PATH_KEYS = ("max_stars_repo_path", "path")


def _pick(row: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in row and row[k] is not None:
            return row[k]
    return None


def _check_columns(columns: list[str], source: str) -> None:
    missing = []  # a repository column is optional: rows without one are their own repos
    if not any(k in columns for k in _PATH_KEYS):
        missing.append("/".join(_PATH_KEYS))
    if "content" not in columns:
        missing.append("content")
    if missing:
        raise CorpusError(
            f"{source}: missing column(s) {', '.join(missing)}; found {sorted(columns)}. "
            "Rows need The Stack's layout: max_stars_repo_name (or repo_name), "
            "max_stars_repo_path (or path), content, optional lang and domain."
        )


def iter_rows(input_path: str) -> Iterator[dict[str, Any]]:
    """Rows of one JSONL or Parquet file as dicts with repo, path, content, lang, domain.

    A row whose content is not a string comes back with content None (counted as non_utf8 by
    the caller); a line that is not JSON raises CorpusError naming the file and line.
    """
    if input_path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - pyarrow is a test/parquet extra
            raise CorpusError(
                "Reading Parquet needs pyarrow: pip install 'zen-code-jax[parquet]'."
            ) from e
        pf = pq.ParquetFile(input_path)
        cols = pf.schema_arrow.names
        _check_columns(cols, input_path)
        want = [c for c in (*_REPO_KEYS, *_PATH_KEYS, "content", "lang", "domain") if c in cols]
        for batch in pf.iter_batches(columns=want, batch_size=1024):
            for row in batch.to_pylist():
                yield _normalize_row(row)
        return
    opener = gzip.open if input_path.endswith(".gz") else open
    with opener(input_path, "rb") as fh:
        checked = False
        for lineno, raw in enumerate(io.BufferedReader(fh) if opener is gzip.open else fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorpusError(
                    f"{input_path}:{lineno} is not valid JSON ({e.__class__.__name__}: {e}). "
                    "JSONL input needs one JSON object per line."
                ) from e
            if not checked:
                _check_columns(list(row), input_path)
                checked = True
            yield _normalize_row(row)


def norepo_name(path: str, content: str | None) -> str:
    """A row without a repository is its own repository, named by a hash of path + content
    (stable under any row order; exact copies share it, and exact dedup keeps one)."""
    h = hashlib.sha256(f"{path}\0{content or ''}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"_norepo/{h[:16]}"


def _normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    content = row.get("content")
    lang = row.get("lang")
    path = str(_pick(row, _PATH_KEYS) or "")
    content = content if isinstance(content, str) else None
    repo = _pick(row, _REPO_KEYS)
    return {
        "repo": str(repo) if repo not in (None, "") else norepo_name(path, content),
        "path": path,
        "content": content,
        "lang": normalize_language(lang) if isinstance(lang, str) and lang else None,
        "domain": row.get("domain") if isinstance(row.get("domain"), str) else None,
    }


def row_language(row: dict[str, Any]) -> tuple[str | None, str]:
    """(language, domain) of a row: its own fields first, else from the path."""
    lang = row["lang"] or language_of(row["path"], (row["content"] or "")[:HEAD_CHARS])
    domain = row["domain"] or (domain_of(lang) if lang else "code")
    return lang, domain
