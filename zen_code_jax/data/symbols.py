"""Symbol tables of source files: top-level functions, classes with their methods, constants.

The report trains on windows "with structured file-path and symbol-table prefixes"
(`data.repo_prefix`, laid out by `data/repo_format.py`). A table lists, per context file,
the signatures of its top-level definitions (docstrings and bodies off), so a model sees
what the other files of the repository offer without reading them whole.

One parser for every language: tree-sitter (the per-language grammar wheels, pinned in
setup.py) for the report's Table 3 languages (Python, JavaScript, TypeScript, Java, C/C++,
Rust, Go, Ruby, PHP, Shell). Python's own `ast` is the reference the Python tables are
tested against (`python_reference`: every top-level def/class of the stdlib, signatures
equal after `ast.unparse`). A file whose tree has a syntax error, or whose language has no
grammar here, gets no table (`SymbolTable.status` says which): its path is still listed.

A signature is the source of a definition's header: every token from the node's start to
its body, comments dropped, line breaks (with their indentation) folded to one space, a
trailing `:` / `{` dropped, so `def f(a,\\n      b=1) -> int:` reads `def f(a, b=1) -> int`.
Decorators and annotations before `def`/`class` are not part of it (Python); Java
modifiers and annotations are.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import importlib
import re
from typing import Any

from zen_code_jax.data.languages import language_of

# Parse outcomes (`SymbolTable.status`), counted by callers (`PrefixStats`).
PARSED, SYNTAX_ERROR, UNSUPPORTED = "parsed", "syntax_error", "unsupported"
STATUSES: tuple[str, ...] = (PARSED, SYNTAX_ERROR, UNSUPPORTED)

_UPPER = re.compile(r"^[A-Z_][A-Z0-9_]*$")  # a Python / Ruby / Shell constant's name


@dataclasses.dataclass(frozen=True)
class Symbol:
    """One top-level definition: kind ("function" | "class" | "constant"), its signature,
    and for a class its members' signatures (methods, class constants)."""

    kind: str
    signature: str
    members: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SymbolTable:
    """The symbols of one file and how parsing went (`status` in `STATUSES`)."""

    symbols: tuple[Symbol, ...]
    status: str

    def lines(self) -> list[str]:
        """One line per symbol, members indented by four spaces (the prefix's text)."""
        out: list[str] = []
        for s in self.symbols:
            out.append(s.signature)
            out.extend(f"    {m}" for m in s.members)
        return out


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How one grammar spells definitions (node types; see `_SPECS`)."""

    module: str  # the grammar wheel's module
    attr: str  # its language function
    functions: frozenset[str]
    classes: frozenset[str]
    members: frozenset[str]  # methods inside a class body
    constants: frozenset[str]
    transparent: frozenset[str]  # wrappers whose inner definitions count as top-level


def _fs(*names: str) -> frozenset[str]:
    return frozenset(names)


_JS_FUNCS = _fs("function_declaration", "generator_function_declaration", "function_signature")
_SPECS: dict[str, _Spec] = {
    "Python": _Spec(
        "tree_sitter_python",
        "language",
        _fs("function_definition"),
        _fs("class_definition"),
        _fs("function_definition"),
        _fs("expression_statement"),
        _fs("decorated_definition"),
    ),
    "JavaScript": _Spec(
        "tree_sitter_javascript",
        "language",
        _JS_FUNCS,
        _fs("class_declaration"),
        _fs("method_definition"),
        _fs("lexical_declaration"),
        _fs("export_statement"),
    ),
    "TypeScript": _Spec(
        "tree_sitter_typescript",
        "language_typescript",
        _JS_FUNCS,
        _fs("class_declaration", "abstract_class_declaration", "interface_declaration"),
        _fs("method_definition", "method_signature", "abstract_method_signature"),
        _fs("lexical_declaration"),
        _fs("export_statement"),
    ),
    "Java": _Spec(
        "tree_sitter_java",
        "language",
        _fs(),
        _fs("class_declaration", "interface_declaration", "enum_declaration", "record_declaration"),
        _fs("method_declaration", "constructor_declaration", "field_declaration"),
        _fs(),
        _fs(),
    ),
    "C": _Spec(
        "tree_sitter_c",
        "language",
        _fs("function_definition", "declaration"),
        _fs("struct_specifier", "union_specifier", "enum_specifier"),
        _fs(),
        _fs("preproc_def", "declaration"),
        _fs("linkage_specification"),
    ),
    "C++": _Spec(
        "tree_sitter_cpp",
        "language",
        _fs("function_definition", "declaration"),
        _fs("class_specifier", "struct_specifier", "union_specifier", "enum_specifier"),
        _fs("function_definition", "field_declaration", "declaration"),
        _fs("preproc_def", "declaration"),
        _fs("namespace_definition", "template_declaration", "linkage_specification"),
    ),
    "Rust": _Spec(
        "tree_sitter_rust",
        "language",
        _fs("function_item", "function_signature_item"),
        _fs("struct_item", "enum_item", "trait_item", "impl_item"),
        _fs("function_item", "function_signature_item"),
        _fs("const_item", "static_item"),
        _fs(),
    ),
    "Go": _Spec(
        "tree_sitter_go",
        "language",
        _fs("function_declaration", "method_declaration"),
        _fs("type_declaration"),
        _fs(),
        _fs("const_declaration"),
        _fs(),
    ),
    "Ruby": _Spec(
        "tree_sitter_ruby",
        "language",
        _fs("method", "singleton_method"),
        _fs("class"),
        _fs("method", "singleton_method"),
        _fs("assignment"),
        _fs("module"),
    ),
    "PHP": _Spec(
        "tree_sitter_php",
        "language_php",
        _fs("function_definition"),
        _fs("class_declaration", "interface_declaration", "trait_declaration", "enum_declaration"),
        _fs("method_declaration", "const_declaration"),
        _fs("const_declaration"),
        _fs("namespace_definition"),
    ),
    "Shell": _Spec(
        "tree_sitter_bash",
        "language",
        _fs("function_definition"),
        _fs(),
        _fs(),
        _fs("variable_assignment", "declaration_command"),
        _fs(),
    ),
}
_SPECS["TSX"] = dataclasses.replace(_SPECS["TypeScript"], attr="language_tsx")  # .tsx: JSX
GRAMMARS: tuple[str, ...] = tuple(_SPECS)  # a grammar's code is its index here
_CPP_EXT = (".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++", ".inl", ".ipp", ".tcc")


def grammar_of(path: str) -> str | None:
    """The grammar that parses `path` (a `_SPECS` key), or None. C/C++ splits by extension:
    `.h` and `.c` parse as C, the C++ extensions as C++; `.tsx` parses as TSX."""
    lang = language_of(path)
    if lang == "TypeScript" and path.lower().endswith(".tsx"):
        return "TSX"
    if lang == "C/C++":
        return "C++" if path.lower().endswith(_CPP_EXT) or path.endswith(".cu") else "C"
    return lang if lang in _SPECS else None


@functools.cache
def parser_for(grammar: str) -> Any:
    """A tree-sitter parser of one grammar (built once per process)."""
    spec = _SPECS[grammar]
    try:
        import tree_sitter

        lang = getattr(importlib.import_module(spec.module), spec.attr)()
    except ImportError as e:
        raise ImportError(
            f"Symbol tables and fim.span='ast' need tree-sitter and the {grammar} grammar "
            f"({e.name} is missing); install them with pip install -e '.[symbols]'."
        ) from None
    return tree_sitter.Parser(tree_sitter.Language(lang))


def _leaves(node: Any, end: int, out: list[Any]) -> None:
    """The non-comment leaf nodes of `node` that start before byte `end`, in order."""
    for c in node.children:
        if c.start_byte >= end:
            return
        if "comment" in c.type:
            continue
        if c.child_count == 0 or c.type in ("string_content", "string_fragment"):
            out.append(c)
        else:
            _leaves(c, end, out)


def _text(node: Any, src: bytes, end: int | None = None) -> str:
    """The header text of `node` up to byte `end`, line breaks folded (module docstring)."""
    stop = node.end_byte if end is None else end
    leaves: list[Any] = []
    if node.child_count == 0:
        leaves = [node]
    else:
        _leaves(node, stop, leaves)
    parts: list[str] = []
    prev: Any = None
    for leaf in leaves:
        text = src[leaf.start_byte : min(leaf.end_byte, stop)].decode("utf-8", "replace")
        if prev is not None:
            gap = src[prev.end_byte : leaf.start_byte].decode("utf-8", "replace")
            if "\n" in gap:
                ptext = src[prev.start_byte : prev.end_byte].decode("utf-8", "replace")
                gap = "" if ptext in ("(", "[", "{", "<") or text in (")", "]", "}", ">") else " "
            parts.append(gap)
        parts.append(text)
        prev = leaf
    return "".join(parts).strip()


_TRAILING = (";", "{", ":", "=", "end")


def _header_end(node: Any) -> int:
    """Where a definition's header ends: its body's start, else after its last child that is
    not a closing token (`;`, `end`, ...)."""
    body = node.child_by_field_name("body")
    if body is not None:
        return body.start_byte
    kids = [c for c in node.children if "comment" not in c.type]
    while kids and kids[-1].type in _TRAILING:
        kids.pop()
    return kids[-1].end_byte if kids else node.end_byte


def signature(node: Any, src: bytes) -> str:
    """A definition's signature (see the module docstring)."""
    text = _text(node, src, _header_end(node))
    for tail in (":", "{"):
        if text.endswith(tail):
            text = text[: -len(tail)].rstrip()
    return text


def _has(node: Any, kind: str) -> bool:
    """Whether `node` has a descendant of type `kind` (a function declarator in C)."""
    stack = list(node.children)
    while stack:
        c = stack.pop()
        if c.type == kind:
            return True
        if c.type not in ("compound_statement", "field_declaration_list", "initializer_list"):
            stack.extend(c.children)
    return False


def _first_eq(node: Any) -> Any:
    """The first `=` token in `node` (preorder), or None."""
    for c in node.children:
        if c.type == "=":
            return c
        found = _first_eq(c)
        if found is not None:
            return found
    return None


def _before_value(node: Any, src: bytes) -> str:
    """A declaration's text up to its `=` (the value left out)."""
    eq = _first_eq(node)
    return _text(node, src, node.end_byte if eq is None else eq.start_byte).rstrip(";").rstrip()


def _constants(grammar: str, node: Any, src: bytes) -> list[str]:
    """Signatures of the constants one top-level statement declares ([] if none)."""
    t = node.type
    if grammar == "Python":
        out: list[str] = []
        stmt = node.named_children[0] if node.named_child_count else None
        while stmt is not None and stmt.type == "assignment":
            left, right = stmt.child_by_field_name("left"), stmt.child_by_field_name("right")
            kind = stmt.child_by_field_name("type")
            if left is not None and left.type == "identifier" and _UPPER.match(left.text.decode()):
                out.append(left.text.decode() + (f": {_text(kind, src)}" if kind else ""))
            stmt = right
        return out
    if t == "lexical_declaration":  # JS / TS: const only
        if node.child_by_field_name("kind").type != "const":
            return []
        decls = [c for c in node.named_children if c.type == "variable_declarator"]
        return [f"const {_before_value(d, src)}" for d in decls]
    if t == "preproc_def":
        return [f"#define {node.child_by_field_name('name').text.decode()}"]
    if t == "declaration":  # C / C++: a const or constexpr global
        quals = {c.text.decode() for c in node.children if c.type == "type_qualifier"}
        if not quals & {"const", "constexpr"} or _has(node, "function_declarator"):
            return []
        return [_before_value(node, src)]
    if t in ("const_item", "static_item"):
        return [_before_value(node, src)]
    if t == "const_declaration":  # Go const_spec / PHP const_element
        specs = [c for c in node.named_children if c.type in ("const_spec", "const_element")]
        return [f"const {_before_value(s, src)}" for s in specs]
    if t == "assignment":  # Ruby
        left = node.child_by_field_name("left")
        return [left.text.decode()] if left is not None and left.type == "constant" else []
    if t == "variable_assignment":  # Shell: upper-case names
        name = node.child_by_field_name("name").text.decode()
        return [name] if _UPPER.match(name) else []
    if t == "declaration_command":  # Shell: readonly / declare -r
        if node.children[0].text.decode() != "readonly":
            return []
        names = [c.child_by_field_name("name") for c in node.named_children]
        return [f"readonly {n.text.decode()}" for n in names if n is not None]
    return []


def _members(grammar: str, spec: _Spec, node: Any, src: bytes) -> tuple[str, ...]:
    """Signatures of a class's methods (and class constants where the language has them)."""
    body = node.child_by_field_name("body")
    if body is None:
        return ()
    out: list[str] = []
    for c in body.named_children:
        inner = _unwrap(c, spec)
        for d in inner:
            if d.type not in spec.members:
                continue
            if d.type == "field_declaration" and grammar == "Java":
                mods = d.named_children[0] if d.named_children else None
                words = set(mods.text.decode().split()) if mods and mods.type == "modifiers" else ()
                if {"static", "final"} <= set(words):
                    out.append(_before_value(d, src))
            elif d.type in ("field_declaration", "declaration"):  # C++: a method declaration
                if _has(d, "function_declarator"):
                    out.append(signature(d, src))
            elif d.type == "const_declaration":
                out.extend(_constants(grammar, d, src))
            else:
                out.append(signature(d, src))
    return tuple(out)


def _walk_type(node: Any) -> list[Any]:
    """Every descendant of a Go type declaration (to find an interface's methods)."""
    out, stack = [], list(node.children)
    while stack:
        c = stack.pop(0)
        out.append(c)
        stack.extend(c.children)
    return out


def _unwrap(node: Any, spec: _Spec) -> list[Any]:
    """The definitions inside transparent wrappers (decorators, `export`, namespaces)."""
    if node.type not in spec.transparent:
        return [node]
    inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
    if inner is not None:
        return _unwrap(inner, spec)
    body = node.child_by_field_name("body")
    kids = body.named_children if body is not None else node.named_children
    return [d for c in kids for d in _unwrap(c, spec)]


def _go_type(node: Any, src: bytes) -> list[Symbol]:
    """Go `type X struct/interface/...`: one class-like symbol per type spec."""
    out = []
    for spec_node in node.named_children:
        if spec_node.type not in ("type_spec", "type_alias"):
            continue
        name = spec_node.child_by_field_name("name").text.decode()
        typ = spec_node.child_by_field_name("type")
        kw = typ.children[0].type if typ.type in ("struct_type", "interface_type") else None
        sig = f"type {name} {kw or _text(typ, src)}"
        methods = tuple(_text(m, src) for m in _walk_type(spec_node) if m.type == "method_elem")
        out.append(Symbol("class", sig, methods))
    return out


def _symbols(grammar: str, root: Any, src: bytes) -> list[Symbol]:
    spec = _SPECS[grammar]
    out: list[Symbol] = []
    for top in root.named_children:
        for node in _unwrap(top, spec):
            t = node.type
            if grammar == "Go" and t == "type_declaration":
                out.extend(_go_type(node, src))
            elif t in spec.classes and node.child_by_field_name("body") is not None:
                out.append(
                    Symbol("class", signature(node, src), _members(grammar, spec, node, src))
                )
            elif t in spec.functions and (t != "declaration" or _has(node, "function_declarator")):
                out.append(Symbol("function", signature(node, src)))
            elif t in spec.constants:
                out.extend(Symbol("constant", c) for c in _constants(grammar, node, src))
    return out


def symbol_table(path: str, content: str) -> SymbolTable:
    """The symbol table of one file (tree-sitter; status `unsupported` / `syntax_error`
    with no symbols when there is no grammar for it or its tree has an error)."""
    grammar = grammar_of(path)
    if grammar is None:
        return SymbolTable((), UNSUPPORTED)
    src = content.encode("utf-8")
    tree = parser_for(grammar).parse(src)
    if tree.root_node.has_error:
        return SymbolTable((), SYNTAX_ERROR)
    return SymbolTable(tuple(_symbols(grammar, tree.root_node, src)), PARSED)


# ---------------------------------------------------------------- Python's ast (reference)


def _ast_signature(node: ast.AST) -> str:
    """`ast.unparse` of a def/class header (decorators and body dropped)."""
    head = copy.copy(node)  # the caller's node keeps its body
    head.decorator_list = []  # type: ignore[attr-defined]
    head.body = [ast.Expr(ast.Constant(...))]  # type: ignore[attr-defined]
    return ast.unparse(head).rsplit(":", 1)[0].rstrip()


def normalize_signature(sig: str, kind: str = "function") -> str:
    """A tree-sitter Python signature as `ast.unparse` writes it (for comparison)."""
    if kind == "constant":
        return ast.unparse(ast.parse(sig))
    return _ast_signature(ast.parse(sig + ": ...").body[0])


def python_reference(content: str) -> list[Symbol]:
    """The Python symbol table by `ast` (signatures as `ast.unparse` writes them)."""
    out: list[Symbol] = []
    for node in ast.parse(content).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(Symbol("function", _ast_signature(node)))
        elif isinstance(node, ast.ClassDef):
            members = tuple(
                _ast_signature(m)
                for m in node.body
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
            out.append(Symbol("class", _ast_signature(node), members))
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            out.extend(Symbol("constant", n) for n in names if _UPPER.match(n))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if _UPPER.match(node.target.id):
                ann = ast.unparse(node.annotation)
                out.append(Symbol("constant", f"{node.target.id}: {ann}"))
    return out
