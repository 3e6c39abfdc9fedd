"""Import extraction per language and the deterministic dependencies-first order."""

from __future__ import annotations

import random

import pytest

from zen_code_jax.data.import_graph import build_import_graph, order_files, topological_order

# Each synthetic repository: files and the exact import edges {user: {dependencies}}.
REPOS = {
    "python": (
        {
            "pkg/__init__.py": "from .core import Engine\n",
            "pkg/core.py": "import os\nfrom pkg.util import helper\nfrom . import models\n",
            "pkg/util.py": "import json  # stdlib: no edge\n",
            "pkg/models/__init__.py": "from .user import User\n",
            "pkg/models/user.py": "from ..util import helper\nfrom pkg import core\n",
            "main.py": "import pkg.core\nfrom pkg.models.user import User\n",
        },
        {
            "pkg/__init__.py": {"pkg/core.py"},
            "pkg/core.py": {"pkg/util.py", "pkg/models/__init__.py"},
            "pkg/util.py": set(),
            "pkg/models/__init__.py": {"pkg/models/user.py"},
            # user -> core -> models/__init__ -> user: a cycle
            "pkg/models/user.py": {"pkg/util.py", "pkg/core.py"},
            "main.py": {"pkg/core.py", "pkg/models/user.py"},
        },
    ),
    "js": (
        {
            "src/index.ts": "import { a } from './a';\nimport b from \"./lib\";\nimport React from 'react';\n",
            "src/a.ts": "export * from './b';\nconst c = require('./c.js');\n",
            "src/b.ts": "import { a } from './a';\n",  # cycle a <-> b
            "src/c.js": "module.exports = 1;\n",
            "src/lib/index.js": "const x = await import('../c.js');\n",
        },
        {
            "src/index.ts": {"src/a.ts", "src/lib/index.js"},
            "src/a.ts": {"src/b.ts", "src/c.js"},
            "src/b.ts": {"src/a.ts"},
            "src/c.js": set(),
            "src/lib/index.js": {"src/c.js"},
        },
    ),
    "java": (
        {
            "src/main/java/com/acme/App.java": "package com.acme;\nimport com.acme.util.Strings;\nimport com.acme.model.*;\nimport java.util.List;\n",
            "src/main/java/com/acme/util/Strings.java": "package com.acme.util;\n",
            "src/main/java/com/acme/model/User.java": "package com.acme.model;\nimport static com.acme.util.Strings.trim;\n",
            "src/main/java/com/acme/model/Group.java": "package com.acme.model;\nimport com.acme.App;\n",
        },
        {
            "src/main/java/com/acme/App.java": {
                "src/main/java/com/acme/util/Strings.java",
                "src/main/java/com/acme/model/User.java",
                "src/main/java/com/acme/model/Group.java",
            },
            "src/main/java/com/acme/util/Strings.java": set(),
            "src/main/java/com/acme/model/User.java": {"src/main/java/com/acme/util/Strings.java"},
            "src/main/java/com/acme/model/Group.java": {"src/main/java/com/acme/App.java"},
        },
    ),
    "c": (
        {
            "include/lib.h": '#include "types.h"\n#include <stdio.h>\n',
            "include/types.h": "typedef int T;\n",
            "src/lib.c": '#include "lib.h"\n#include "../include/types.h"\n',
            "src/main.cpp": '#include <lib.h>\n#include "util.hpp"\n',
            "src/util.hpp": '#pragma once\n#include "main.hpp"\n',
            "src/main.hpp": '#include "util.hpp"\n',
        },
        {
            "include/lib.h": {"include/types.h"},
            "include/types.h": set(),
            "src/lib.c": {"include/lib.h", "include/types.h"},
            "src/main.cpp": {"include/lib.h", "src/util.hpp"},
            "src/util.hpp": {"src/main.hpp"},
            "src/main.hpp": {"src/util.hpp"},
        },
    ),
    "go": (
        {
            "go.mod": "module github.com/acme/tool\n\ngo 1.22\n",
            "main.go": 'package main\n\nimport (\n\t"fmt"\n\t"github.com/acme/tool/internal/store"\n)\n',
            "internal/store/store.go": 'package store\n\nimport "github.com/acme/tool/pkg/codec"\n',
            "internal/store/store_test.go": "package store\n",
            "pkg/codec/codec.go": 'package codec\n\nimport x "github.com/acme/tool/internal/store"\n',
        },
        {
            "go.mod": set(),
            "main.go": {"internal/store/store.go"},
            "internal/store/store.go": {"pkg/codec/codec.go"},
            "internal/store/store_test.go": set(),
            "pkg/codec/codec.go": {"internal/store/store.go"},
        },
    ),
    "rust": (
        {
            "src/lib.rs": "pub mod parser;\nmod util;\nuse std::fmt;\n",
            "src/parser/mod.rs": "mod lexer;\nuse crate::util::{helper, Other as O};\n",
            "src/parser/lexer.rs": "use super::super::util;\nuse crate::parser;\n",
            "src/util.rs": "pub fn helper() {}\n",
        },
        {
            "src/lib.rs": {"src/parser/mod.rs", "src/util.rs"},
            "src/parser/mod.rs": {"src/parser/lexer.rs", "src/util.rs"},
            "src/parser/lexer.rs": {"src/util.rs", "src/parser/mod.rs"},
            "src/util.rs": set(),
        },
    ),
}


@pytest.mark.parametrize("lang", sorted(REPOS))
def test_extracted_edges(lang: str) -> None:
    files, edges = REPOS[lang]
    assert build_import_graph(files) == edges


def _cycles(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one file (brute force)."""
    reach = {p: set(d) for p, d in edges.items()}
    changed = True
    while changed:
        changed = False
        for p in reach:
            new = set().union(*(reach[d] for d in reach[p])) - reach[p]
            if new:
                reach[p] |= new
                changed = True
    return {frozenset({p} | {q for q in reach[p] if p in reach[q]}) for p in reach if p in reach[p]}


@pytest.mark.parametrize("lang", sorted(REPOS))
def test_dependencies_first(lang: str) -> None:
    files, edges = REPOS[lang]
    order = order_files(files)
    assert sorted(order) == sorted(files)
    pos = {p: i for i, p in enumerate(order)}
    in_cycle = {p for c in _cycles(edges) for p in c}
    for user, deps in edges.items():
        for dep in deps:
            if not (user in in_cycle and dep in in_cycle):
                assert pos[dep] < pos[user], (dep, user, order)
    # Deterministic whatever the input order.
    items = list(files.items())
    random.Random(0).shuffle(items)
    assert order_files(dict(items)) == order


def test_cycle_broken_by_smallest_in_degree_then_path() -> None:
    # A file that needs a cycle is never picked to break it, even with the smallest path.
    g = {"a_user": {"x", "y"}, "x": {"y"}, "y": {"x"}}
    assert topological_order(g) == ["x", "y", "a_user"]
    # a <-> b, c -> a; b -> z.  After z, the cycle {a, b, c} has no ready file:
    # unemitted deps: a:{b}=1, b:{a}=1, c:{a}=1 -> tie at 1 -> smallest path "a".
    g = {"a": {"b"}, "b": {"a", "z"}, "c": {"a"}, "z": set()}
    assert topological_order(g) == ["z", "a", "b", "c"]
    # d has two unemitted deps, e one: e goes first although "d" < "e".
    g = {"d": {"e", "f"}, "e": {"d"}, "f": {"d"}}
    assert topological_order(g) == ["e", "d", "f"]
    # Acyclic: dependencies first, ties by path.
    g = {"m": {"x"}, "x": set(), "b": set(), "a": {"m"}}
    assert topological_order(g) == ["b", "x", "m", "a"]


def test_cycle_matches_brute_force_rule() -> None:
    """Random graphs: the order equals a direct simulation of the rule."""
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 9)
        names = [f"f{i}" for i in range(n)]
        g = {p: {q for q in names if q != p and rng.random() < 0.3} for p in names}
        expect, done = [], set()
        while len(expect) < n:
            left = [p for p in names if p not in done]
            ready = [p for p in left if not (g[p] - done)]
            if ready:
                p = min(ready)
            else:  # files of cycles that need nothing outside their own cycle
                sub = {q: g[q] - done for q in left}
                sccs = _cycles(sub)
                cand = [q for c in sccs if all(sub[m] <= c for m in c) for q in c]
                p = min(cand, key=lambda q: (len(g[q] - done), q))
            expect.append(p)
            done.add(p)
        assert topological_order(g) == expect
