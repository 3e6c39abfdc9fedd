"""Import graphs of one repository and a deterministic dependencies-first file order.

Repository fine-tuning packs a repository's files so that a file's dependencies come before
it (report section 3.4): when the model reads a user, the definitions it uses are already in
context. Imports are found with regular expressions (no parsers: fast, robust to files that
do not compile) and resolved only to files of the same repository; imports of the standard
library or third-party packages resolve to nothing and are ignored.

Languages: Python, JavaScript/TypeScript, Java, C/C++, Go and Rust. Other files take part in
the order with no edges.

Order (`topological_order`): Kahn's algorithm where every step emits, among the files whose
dependencies have all been emitted, the one with the smallest path. When only cycles remain,
the file with the fewest not-yet-emitted dependencies ("smallest in-degree") is emitted
next, ties broken by path. The result depends only on the set of (path, content) pairs.
"""

from __future__ import annotations

import heapq
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence

_EXT_LANG = {
    ".py": "python",
    ".pyi": "python",
    ".js": "js",
    ".jsx": "js",
    ".mjs": "js",
    ".cjs": "js",
    ".ts": "js",
    ".tsx": "js",
    ".mts": "js",
    ".cts": "js",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "c",
    ".cpp": "c",
    ".cxx": "c",
    ".hpp": "c",
    ".hh": "c",
    ".hxx": "c",
    ".inl": "c",
    ".go": "go",
    ".rs": "rust",
}
_JS_EXTS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts", ".d.ts")


def language_of(path: str) -> str | None:
    """The import-graph language of a path (by extension), or None."""
    return _EXT_LANG.get(posixpath.splitext(path)[1].lower())


# ----------------------------------------------------------------------------- extraction
_PY_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^#\n;]+)", re.M)
_PY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^#\n;]+)", re.M)
_JS_SPEC = re.compile(
    r"""(?:\bimport\s+(?:[\w*{}\s,$]+?\s+from\s+)?|\bexport\s+[\w*{}\s,$]*?\s*from\s+|"""
    r"""\brequire\s*\(\s*|\bimport\s*\(\s*)(['"])([^'"\n]+)\1"""
)
_JAVA_IMPORT = re.compile(r"^[ \t]*import[ \t]+(?:static[ \t]+)?([\w.]+(?:\.\*)?)[ \t]*;", re.M)
_JAVA_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([\w.]+)[ \t]*;", re.M)
_C_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[ \t]*([<\"])([^>\"\n]+)[>\"]", re.M)
_GO_IMPORT_BLOCK = re.compile(r"^import[ \t]*\(([^)]*)\)", re.M)
_GO_IMPORT_ONE = re.compile(r"^import[ \t]+(?:[\w.]+[ \t]+)?\"([^\"]+)\"", re.M)
_GO_QUOTED = re.compile(r"\"([^\"]+)\"")
_GO_MODULE = re.compile(r"^module[ \t]+(\S+)", re.M)
_RUST_MOD = re.compile(r"^[ \t]*(?:pub(?:\([^)]*\))?[ \t]+)?mod[ \t]+(\w+)[ \t]*;", re.M)
_RUST_USE = re.compile(r"^[ \t]*(?:pub(?:\([^)]*\))?[ \t]+)?use[ \t]+([^;]+);", re.M)


def _strip_block_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def python_imports(text: str) -> list[tuple[int, str, list[str]]]:
    """(level, module, names) per import statement; `import a.b` gives (0, 'a.b', [])."""
    out: list[tuple[int, str, list[str]]] = []
    for m in _PY_IMPORT.finditer(text):
        for part in m.group(1).split(","):
            name = part.strip().split()[0] if part.strip() else ""
            if re.fullmatch(r"[\w.]+", name):
                out.append((0, name, []))
    for m in _PY_FROM.finditer(text):
        mod = m.group(1)
        level = len(mod) - len(mod.lstrip("."))
        names = [
            n.strip().split()[0]
            for n in m.group(2).strip("()").replace("\\", " ").split(",")
            if n.strip()
        ]
        out.append((level, mod.lstrip("."), [n for n in names if n != "*"]))
    return out


def js_imports(text: str) -> list[str]:
    return [m.group(2) for m in _JS_SPEC.finditer(text)]


def java_imports(text: str) -> list[str]:
    return _JAVA_IMPORT.findall(text)


def c_includes(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2).strip()) for m in _C_INCLUDE.finditer(text)]


def go_imports(text: str) -> list[str]:
    out = list(_GO_IMPORT_ONE.findall(text))
    for block in _GO_IMPORT_BLOCK.findall(text):
        out.extend(_GO_QUOTED.findall(block))
    return out


def rust_refs(text: str) -> tuple[list[str], list[str]]:
    """(`mod x;` names, `use` paths with braces expanded one level)."""
    mods = _RUST_MOD.findall(text)
    uses: list[str] = []
    for m in _RUST_USE.finditer(text):
        body = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", m.group(1)))
        head, brace, rest = body.partition("{")
        head = head.rstrip(":")
        uses.append(head)
        if brace:
            for item in rest.replace("{", ",").replace("}", ",").split(","):
                if item and item != "self":
                    uses.append(f"{head}::{item}")
    return mods, uses


# ----------------------------------------------------------------------------- resolution
class _Index:
    """Lookup tables over the repository's paths."""

    def __init__(self, paths: Iterable[str]):
        self.paths = sorted(set(paths))
        self.pathset = set(self.paths)
        self.by_dir: dict[str, list[str]] = {}
        for p in self.paths:
            self.by_dir.setdefault(posixpath.dirname(p), []).append(p)
        # Python: every dotted suffix of a module path -> files (src layouts, nested roots).
        self.py_mod: dict[str, list[str]] = {}
        # Java: every path suffix (com/foo/Bar.java) -> files; C: same for headers.
        self.suffix: dict[str, list[str]] = {}
        for p in self.paths:
            parts = p.split("/")
            for k in range(len(parts)):
                self.suffix.setdefault("/".join(parts[k:]), []).append(p)
            if language_of(p) == "python":
                stem = posixpath.splitext(p)[0].split("/")
                if stem[-1] == "__init__":
                    stem = stem[:-1]
                for k in range(len(stem)):
                    if stem[k:]:
                        self.py_mod.setdefault(".".join(stem[k:]), []).append(p)
        self.dirs_suffix: dict[str, list[str]] = {}
        for d in self.by_dir:
            parts = d.split("/") if d else []
            for k in range(len(parts)):
                self.dirs_suffix.setdefault("/".join(parts[k:]), []).append(d)

    def py_module(self, name: str, near: str) -> list[str]:
        """Files for a dotted module; prefer the candidate closest to the importing file."""
        cands = self.py_mod.get(name, [])
        if len(cands) <= 1:
            return list(cands)

        # The candidate sharing the longest directory prefix with the importer wins.
        def score(c: str) -> tuple[int, int, str]:
            common = posixpath.commonpath([c, near]) if c and near else ""
            return (-len(common), len(c), c)

        return [min(cands, key=score)]


def _py_deps(path: str, text: str, idx: _Index) -> set[str]:
    deps: set[str] = set()
    pkg_parts = posixpath.dirname(path).split("/") if posixpath.dirname(path) else []
    for level, mod, names in python_imports(text):
        if level:
            base = pkg_parts[: len(pkg_parts) - (level - 1)] if level - 1 <= len(pkg_parts) else []
            base_dir = "/".join(base)
            rel = mod.replace(".", "/") if mod else ""
            target = posixpath.join(base_dir, rel) if rel else base_dir
            cands = []
            for n in names:
                for c in (f"{target}/{n}.py", f"{target}/{n}/__init__.py"):
                    if c in idx.pathset:
                        cands.append(c)
            for c in (f"{target}.py", f"{target}/__init__.py"):
                if rel and c in idx.pathset:
                    cands.append(c)
            if not cands and not rel and f"{target}/__init__.py".lstrip("/") in idx.pathset:
                cands.append(f"{target}/__init__.py".lstrip("/"))
            deps.update(c.lstrip("/") for c in cands)
            continue
        found = False
        for n in names:
            hit = idx.py_module(f"{mod}.{n}", path)
            if hit:
                deps.update(hit)
                found = True
        if not found or not names:
            parts = mod.split(".")
            for k in range(len(parts), 0, -1):  # `import a.b.c` depends on a.b.c (or a.b)
                hit = idx.py_module(".".join(parts[:k]), path)
                if hit:
                    deps.update(hit)
                    break
    return deps


def _js_deps(path: str, text: str, idx: _Index) -> set[str]:
    deps: set[str] = set()
    here = posixpath.dirname(path)
    for spec in js_imports(_strip_block_comments(text)):
        if not spec.startswith("."):
            base = spec.lstrip("/")  # bare specifier: only if it names a repo path
        else:
            base = posixpath.normpath(posixpath.join(here, spec))
        cands = [base] + [base + e for e in _JS_EXTS] + [f"{base}/index{e}" for e in _JS_EXTS]
        for c in cands:
            if c in idx.pathset:
                deps.add(c)
                break
    return deps


def _java_deps(path: str, text: str, idx: _Index) -> set[str]:
    deps: set[str] = set()
    for imp in java_imports(text):
        if imp.endswith(".*"):
            d = imp[:-2].replace(".", "/")
            for dd in idx.dirs_suffix.get(d, []):
                deps.update(p for p in idx.by_dir[dd] if p.endswith(".java"))
            continue
        parts = imp.split(".")
        # `import a.b.C` or `import static a.b.C.member`: try the longest prefix that is a file.
        for k in range(len(parts), 0, -1):
            hit = idx.suffix.get("/".join(parts[:k]) + ".java")
            if hit:
                deps.update(hit[:1] if len(hit) == 1 else sorted(hit)[:1])
                break
    return deps


def _c_deps(path: str, text: str, idx: _Index) -> set[str]:
    deps: set[str] = set()
    here = posixpath.dirname(path)
    for kind, inc in c_includes(text):
        local = posixpath.normpath(posixpath.join(here, inc))
        if kind == '"' and local in idx.pathset:
            deps.add(local)
            continue
        hits = idx.suffix.get(posixpath.normpath(inc), [])
        if hits:
            deps.add(min(hits, key=lambda c: (len(c), c)))
    return deps


def _go_deps(path: str, text: str, idx: _Index, module: str) -> set[str]:
    deps: set[str] = set()
    here = posixpath.dirname(path)
    for imp in go_imports(text):
        dirs: list[str] = []
        if module and (imp == module or imp.startswith(module + "/")):
            d = imp[len(module) :].lstrip("/")
            dirs = [d] if d in idx.by_dir else []
        if not dirs:  # unknown module path: match the longest directory suffix
            parts = imp.split("/")
            for k in range(len(parts)):
                cand = idx.dirs_suffix.get("/".join(parts[k:]))
                if cand:
                    dirs = sorted(cand)[:1]
                    break
        for d in dirs:
            if d != here:
                deps.update(
                    p for p in idx.by_dir[d] if p.endswith(".go") and not p.endswith("_test.go")
                )
    return deps


def _rust_crate_root(path: str, idx: _Index) -> str:
    """Directory holding lib.rs/main.rs above `path` (else the top src/ or the repo root)."""
    d = posixpath.dirname(path)
    while True:
        for root in ("lib.rs", "main.rs"):
            if posixpath.join(d, root) in idx.pathset:
                return d
        if not d:
            return ""
        d = posixpath.dirname(d)


def _rust_module_file(dir_parts: list[str], idx: _Index) -> str | None:
    base = "/".join(dir_parts)
    for c in (f"{base}.rs", f"{base}/mod.rs"):
        if c in idx.pathset:
            return c
    return None


def _rust_deps(path: str, text: str, idx: _Index) -> set[str]:
    deps: set[str] = set()
    here = posixpath.dirname(path)
    stem = posixpath.splitext(posixpath.basename(path))[0]
    # Directory where this file's child modules live.
    mod_dir = here if stem in ("mod", "lib", "main") else posixpath.join(here, stem)
    mods, uses = rust_refs(_strip_block_comments(text))
    for m in mods:
        f = _rust_module_file(mod_dir.split("/") + [m] if mod_dir else [m], idx)
        if f:
            deps.add(f)
    root = _rust_crate_root(path, idx)
    root_parts = root.split("/") if root else []
    mod_parts = mod_dir.split("/") if mod_dir else []
    for u in uses:
        segs = [s for s in u.split("::") if s]
        if not segs:
            continue
        if segs[0] == "crate":
            base, segs = root_parts, segs[1:]
        elif segs[0] == "self":
            base, segs = mod_parts, segs[1:]
        elif segs[0] == "super":
            base = mod_parts
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
        else:
            continue  # external crate
        for k in range(len(segs), 0, -1):
            f = _rust_module_file(base + segs[:k], idx)
            if f:
                deps.add(f)
                break
    return deps


def build_import_graph(files: Mapping[str, str]) -> dict[str, set[str]]:
    """{path: set of paths it imports} for one repository ({path: content})."""
    idx = _Index(files)
    go_module = ""
    for p in idx.paths:
        if posixpath.basename(p) == "go.mod":
            m = _GO_MODULE.search(files[p])
            if m and (not go_module or len(p) < len(go_module)):
                go_module = m.group(1)
    graph: dict[str, set[str]] = {}
    for p in idx.paths:
        text = files[p]
        lang = language_of(p)
        if lang == "python":
            deps = _py_deps(p, text, idx)
        elif lang == "js":
            deps = _js_deps(p, text, idx)
        elif lang == "java":
            deps = _java_deps(p, text, idx)
        elif lang == "c":
            deps = _c_deps(p, text, idx)
        elif lang == "go":
            deps = _go_deps(p, text, idx, go_module)
        elif lang == "rust":
            deps = _rust_deps(p, text, idx)
        else:
            deps = set()
        deps.discard(p)
        graph[p] = deps
    return graph


def _source_sccs(nodes: list[str], deps: Mapping[str, set[str]]) -> list[str]:
    """Files in strongly connected components that depend on nothing outside themselves.

    `deps` is restricted to `nodes`. Iterative Tarjan (no recursion limit on big repos).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comp: dict[str, int] = {}
    comps: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(deps[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(deps[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                members = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp[w] = len(comps)
                    members.append(w)
                    if w == v:
                        break
                comps.append(members)
    out: list[str] = []
    for k, members in enumerate(comps):
        if all(comp[d] == k for m in members for d in deps[m]):
            out.extend(members)
    return out


def topological_order(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Dependencies first; cycles broken by fewest unemitted dependencies, then by path.

    `graph[p]` is the set of files that p imports. Edges to unknown paths are ignored.
    Kahn's algorithm emits the ready file with the smallest path. When no file is ready,
    only cycles block progress: among the files of the cycles that depend on nothing
    outside themselves, the one with the fewest unemitted dependencies (then the smallest
    path) goes next. So every dependency that is not part of a cycle still comes first.
    """
    nodes = sorted(graph)
    known = set(nodes)
    deps = {p: {d for d in graph[p] if d in known and d != p} for p in nodes}
    users: dict[str, list[str]] = {p: [] for p in nodes}
    for p in nodes:
        for d in deps[p]:
            users[d].append(p)
    remaining = {p: len(deps[p]) for p in nodes}
    ready = [p for p in nodes if remaining[p] == 0]
    heapq.heapify(ready)
    emitted: set[str] = set()
    order: list[str] = []
    while len(order) < len(nodes):
        if ready:
            p = heapq.heappop(ready)
        else:  # only cycles left: break one at the smallest in-degree, then path
            left = [q for q in nodes if q not in emitted]
            sub = {q: deps[q] - emitted for q in left}
            p = min(_source_sccs(left, sub), key=lambda q: (remaining[q], q))
        emitted.add(p)
        order.append(p)
        for u in users[p]:
            if u in emitted:
                continue
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    return order


def order_files(files: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[str]:
    """Paths of one repository in dependencies-first order."""
    fmap = dict(files)
    return topological_order(build_import_graph(fmap))
