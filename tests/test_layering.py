"""The package's import graph follows the declared layers (docs/architecture.md).

Every import of a `zen_code_jax` module is read from the source with `ast`, including
imports inside functions, and checked against `ALLOWED`: a part may import itself and the
parts listed for it, nothing else. Function-local imports of our own modules are allowed
only where a `# local import: <reason>` comment sits just above (within 7 lines) (XLA_FLAGS ordering or a
heavy optional dependency), so hidden edges and cycles cannot creep back in.
"""

from __future__ import annotations

import ast
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
INFRA = {"checkpoint", "tracking", "rundir", "hf", "resolve"}


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


def sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
    return [f for f in files if "launcher" not in f.parts]


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
