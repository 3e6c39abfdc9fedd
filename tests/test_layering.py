"""The package's import graph follows the declared layers (docs/architecture.md).

Every import of a `zen_code_jax` module is read from the source with `ast`, including
imports inside functions, and checked against `ALLOWED`: a part may import itself and the
parts listed for it, nothing else. Function-local imports of our own modules are allowed
only where a `# local import: <reason>` comment sits just above (within 7 lines) (XLA_FLAGS
ordering or a heavy optional dependency), so hidden edges cannot creep back in.

Inside a part, modules import one way too: `test_no_import_cycles` fails on any cycle
between modules. Every import counts, module-level, function-local and under
`if TYPE_CHECKING:` alike: a local import or a type-checking guard keeps a cycle from
failing at import time, but the two modules still depend on each other, which is what
the rule is about.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zen_code_jax"

# part -> parts it may import. Mirrors the diagram in docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "parallel": {"model"},
    "config": {"model"},
    "data": {"model", "parallel", "config"},
    "infra": {"model", "parallel", "config", "data"},  # checkpoint, tracking, rundir, hf
    "train": {"model", "parallel", "config", "data", "infra"},
    "infer": {"model", "parallel", "config", "data", "infra"},
    "eval": {"model", "parallel", "config", "data", "infra", "infer"},
    # the language server (issue 19): beside eval, above infer and data
    "lsp": {"model", "parallel", "config", "data", "infra", "infer"},
    "experiment": {"model", "parallel", "config", "data", "infra", "train", "infer", "eval"},
    "experiments": {
        "model",
        "parallel",
        "config",
        "data",
        "infra",
        "train",
        "infer",
        "eval",
        "experiment",
    },
}
# Scripts inside the package that a fresh interpreter runs as files, never imported as
# `zen_code_jax` modules, so they have no place in the layers; instead they must import
# none of our modules (`test_standalone_scripts_import_nothing_of_ours`).
STANDALONE = (PACKAGE / "eval" / "sandbox" / "launcher.py",)  # `python -I -S launcher.py`
# Import cycles that exist today, each with the change that removes it. Any other cycle
# fails, and so does an entry here that is no longer a cycle (delete it then).
KNOWN_CYCLES: dict[frozenset[str], str] = {}
INFRA = {"checkpoint", "checkpoint_tree", "tracking", "rundir", "hf", "resolve"}


def part_of(module: str) -> str:
    """`zen_code_jax.data.fim` -> `data`; top-level infra modules -> `infra`."""
    parts = module.split(".")
    if parts[0] != "zen_code_jax":
        return "experiments"
    if len(parts) == 1:
        return "root"
    head = parts[1]
    return "infra" if head in INFRA else head


def module_name(path: Path) -> str:
    if PACKAGE in path.parents:
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        return ".".join(parts)
    return f"experiments.{path.stem}"


def imports_of(path: Path, mod: str) -> list[tuple[str, int, bool, str]]:
    """(imported zen_code_jax module, line, is function-local, the line above) per import."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = package.split(".")
                    pkg = pkg[: len(pkg) - child.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            for n in names:
                if n.startswith("zen_code_jax"):
                    # The reason may sit above a short run of local imports.
                    above = " ".join(lines[max(0, child.lineno - 8) : child.lineno - 1])
                    out.append((n, child.lineno, local, above))
            visit(child, inner)

    visit(tree, False)
    return out


def all_sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))


def sources() -> list[Path]:
    """Every module of the layers: the package and experiments/, less `STANDALONE`."""
    return [f for f in all_sources() if f not in STANDALONE]


def check_file(path: Path, mod: str) -> list[str]:
    """The layering violations of one source file that is (or poses as) module `mod`."""
    src_part = part_of(mod)
    if src_part == "root":
        return []
    bad = []
    for target, line, local, above in imports_of(path, mod):
        dst_part = part_of(target)
        where = f"{path.name if ROOT not in path.parents else path.relative_to(ROOT)}:{line}"
        # `from zen_code_jax import x` also yields the bare package; its submodule is checked.
        if dst_part == "root":
            continue
        if dst_part != src_part and dst_part not in ALLOWED.get(src_part, set()):
            bad.append(f"{where}: {src_part} must not import {target} ({dst_part})")
        if local and "local import:" not in above:
            bad.append(
                f"{where}: function-local import of {target} without a "
                "'# local import: <reason>' comment just above"
            )
    return bad


def violations() -> list[str]:
    return [b for path in sources() for b in check_file(path, module_name(path))]


def import_graph(files: Iterable[tuple[Path, str]]) -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line" of the first such import}, among `files`.

    `from P import x` is an edge to the module `P.x` when there is one, else to `P` (x is
    a name defined in P). Parent packages that Python imports on the way to a submodule
    are not edges: a package `__init__` re-exporting its submodules would otherwise form a
    cycle with each of them, while the submodules do not depend on each other through it.
    """
    files = list(files)
    known = {mod for _, mod in files}

    def owner(name: str) -> str | None:  # the longest known module prefix of `name`
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in known:
                return ".".join(parts[:k])
        return None

    graph: dict[str, dict[str, str]] = {mod: {} for mod in known}
    for path, mod in files:
        by_line: dict[int, list[str]] = {}
        for target, line, _local, _above in imports_of(path, mod):
            by_line.setdefault(line, []).append(target)
        for line, names in by_line.items():
            # imports_of yields `P` and then `P.x` for each name of a `from P import ...`.
            subs = {n for n in names[1:] if n in known}
            plain = [
                n for n in names if n not in subs and not any(s.startswith(n + ".") for s in subs)
            ]
            targets = subs | {o for n in plain if (o := owner(n)) is not None}
            for t in targets - {mod, "zen_code_jax"}:
                graph[mod].setdefault(t, f"{path.name}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def describe(scc: list[str], graph: dict[str, dict[str, str]]) -> str:
    """One cycle through the component, with the import that makes each edge."""
    start, members = scc[0], set(scc)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth-first: the shortest way from `start` back to it
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                cycle = paths[v] + [start]
                return (
                    " -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
                    + f" -> {start}"
                )
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return " <-> ".join(scc)


def tree_graph() -> dict[str, dict[str, str]]:
    return import_graph((path, module_name(path)) for path in sources())


def test_every_part_is_declared() -> None:
    for path in sources():
        part = part_of(module_name(path))
        assert part in ALLOWED or part == "root", f"{path}: part {part!r} is not in ALLOWED"


def test_imports_follow_the_layers() -> None:
    bad = violations()
    assert not bad, "Import edges against docs/architecture.md:\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_edge(tmp_path: Path) -> None:
    """A model module importing train, and a hidden local import, are both reported."""
    fake = tmp_path / "_layering_probe.py"
    fake.write_text(
        "def f():\n    from zen_code_jax.train import loop\n    return loop\n", encoding="utf-8"
    )
    bad = check_file(fake, "zen_code_jax.model._layering_probe")
    assert any("_layering_probe.py:2: model must not import" in b for b in bad), bad
    assert any("_layering_probe.py:2: function-local import" in b for b in bad), bad


def test_the_exclusions_match() -> None:
    """Each standalone script exists and is left out of the layers, and only it is."""
    layered = set(sources())
    for path in STANDALONE:
        assert path.is_file(), f"{path} is gone: update STANDALONE"
        assert path not in layered, f"{path} is still checked as a layered module"
    assert layered == set(all_sources()) - set(STANDALONE)


def test_standalone_scripts_import_nothing_of_ours() -> None:
    for path in STANDALONE:
        ours = imports_of(path, "standalone")
        assert not ours, f"{path} must import the standard library only: {ours}"


def test_no_import_cycles() -> None:
    graph = tree_graph()
    found = cycles(graph)
    new = [describe(c, graph) for c in found if frozenset(c) not in KNOWN_CYCLES]
    assert not new, "Import cycles between modules (break them; see the module docstring):\n" + (
        "\n".join(new)
    )
    gone = [sorted(k) for k in KNOWN_CYCLES if sorted(k) not in found]
    assert not gone, f"These KNOWN_CYCLES entries are no cycle any more; delete them: {gone}"


def test_the_cycle_check_catches_a_planted_cycle(tmp_path: Path) -> None:
    """Two modules importing each other, one of them inside a function, are one cycle; a
    package re-exporting its submodule is not a cycle; the edges of the tree resolve."""
    a, b, c = (tmp_path / f"_probe_{n}.py" for n in "abc")
    pkg = tmp_path / "__init__.py"
    a.write_text("from zen_code_jax.model import _probe_b\n", encoding="utf-8")
    b.write_text(
        "def f():\n    # local import: a planted cycle\n"
        "    from zen_code_jax.model._probe_a import x\n    return x\n",
        encoding="utf-8",
    )
    c.write_text("from zen_code_jax.model import _probe_a\n", encoding="utf-8")
    pkg.write_text("from zen_code_jax.model._probe_c import y\n", encoding="utf-8")
    files = [
        (a, "zen_code_jax.model._probe_a"),
        (b, "zen_code_jax.model._probe_b"),
        (c, "zen_code_jax.model._probe_c"),
        (pkg, "zen_code_jax.model"),
    ]
    graph = import_graph(files)
    assert graph["zen_code_jax.model._probe_a"] == {"zen_code_jax.model._probe_b": "_probe_a.py:1"}
    assert graph["zen_code_jax.model._probe_c"] == {"zen_code_jax.model._probe_a": "_probe_c.py:1"}
    found = cycles(graph)
    assert found == [["zen_code_jax.model._probe_a", "zen_code_jax.model._probe_b"]], found
    assert "_probe_b.py:3" in describe(found[0], graph)
    # The real tree's graph is not empty by accident: known edges resolve to modules.
    real = tree_graph()
    assert "zen_code_jax.data.tokenizer" in real["zen_code_jax.data.tokenizer_load"]
    assert "zen_code_jax.model.config" in real["zen_code_jax.config"]
