"""Symbol tables (data/symbols.py) and the path / symbol prefix of repository windows
(`data.repo_prefix`, data/repo_format.py): against Python's `ast`, per Table 3 language, and
token for token between training windows, evaluation prompts and the engine's prompts."""

from __future__ import annotations

import json
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from zen_code_jax.config import base_config
from zen_code_jax.data.repo_format import (
    PREFIX_MODES,
    REPO_FORMATS,
    RepoFormat,
    RepoPrefix,
    prefix_stats,
)
from zen_code_jax.data.repo_window import repo_windows
from zen_code_jax.data.symbols import (
    PARSED,
    SYNTAX_ERROR,
    UNSUPPORTED,
    Symbol,
    normalize_signature,
    python_reference,
    symbol_table,
)

FIXTURES = Path(__file__).parent / "fixtures" / "symbols"
STDLIB_SAMPLE_EVERY = 8  # ~90 of the stdlib's ~750 non-test modules: a few seconds


def _stdlib_sample() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not ({"site-packages", "test", "tests", "idle_test"} & set(p.relative_to(root).parts))
    )
    return files[::STDLIB_SAMPLE_EVERY]


def test_python_tables_equal_pythons_ast_on_the_stdlib() -> None:
    """Every top-level def/class/constant `ast` finds, in order, with the same signature
    (both as `ast.unparse` writes them), and the same methods per class."""
    files = _stdlib_sample()
    assert len(files) > 80
    start, n_symbols = time.perf_counter(), 0
    for path in files:
        src = path.read_text(encoding="utf-8", errors="replace")
        try:
            ref = python_reference(src)
        except SyntaxError:
            continue
        table = symbol_table(str(path), src)
        assert table.status == PARSED, f"{path}: tree-sitter failed on a file ast parses"
        got = [
            Symbol(
                s.kind,
                normalize_signature(s.signature, s.kind),
                tuple(normalize_signature(m) for m in s.members),
            )
            for s in table.symbols
        ]
        assert got == ref, f"{path}: symbol table differs from Python's ast"
        n_symbols += len(ref)
    assert n_symbols > 500
    assert time.perf_counter() - start < 60  # bounded (seconds on an idle machine)


EXPECTED: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "sample.py": [
        ("constant", "MAX_SIZE", ()),
        ("function", "def add(a: int, b: int = 2) -> int", ()),
        ("function", "async def fetch(url, *, timeout=3.0)", ()),
        (
            "class",
            "class Shape(Base, metaclass=Meta)",
            ("def area(self) -> float", "def name(self)"),
        ),
    ],
    "sample.js": [
        ("constant", "const MAX_SIZE", ()),
        ("function", "function add(a, b = 2)", ()),
        ("class", "class Shape extends Base", ("constructor(sides)", "area()")),
        ("function", "function* ids(start)", ()),
    ],
    "sample.ts": [
        ("constant", "const MAX_SIZE: number", ()),
        ("class", "interface Point", ()),
        ("function", "function add(a: number, b: number = 2): number", ()),
        (
            "class",
            "class Shape<T> implements Area",
            ("constructor(sides: number)", "area(scale: T): number"),
        ),
    ],
    "Sample.java": [
        (
            "class",
            "public class Sample extends Base implements Runnable",
            (
                "public static final int MAX_SIZE",
                "public Sample(int count)",
                "public int add(int a, int b)",
                "@Override public void run()",
            ),
        ),
        ("class", "interface Shape", ("double area()",)),
    ],
    "sample.c": [
        ("constant", "#define MAX_SIZE", ()),
        ("constant", "static const int LIMIT", ()),
        ("class", "struct point", ()),
        ("function", "int add(int a, int b)", ()),  # the prototype
        ("function", "int add(int a, int b)", ()),  # the definition
        ("function", "static void print_point(const struct point *p)", ()),
    ],
    "sample.cpp": [
        ("constant", "constexpr int kMaxSize", ()),
        (
            "class",
            "class Shape : public Base",
            ("explicit Shape(int sides)", "virtual double area() const = 0", "int sides() const"),
        ),
        ("function", "T add(T a, T b)", ()),
    ],
    "sample.rs": [
        ("constant", "pub const MAX_SIZE: usize", ()),
        ("class", "pub struct Point", ()),
        ("class", "impl Point", ("pub fn new(x: i32, y: i32) -> Self", "fn norm(&self) -> f64")),
        ("class", "pub trait Shape", ("fn area(&self) -> f64",)),
        ("function", "pub fn add(a: i32, b: i32) -> i32", ()),
    ],
    "sample.go": [
        ("constant", "const MaxSize", ()),
        ("class", "type Point struct", ()),
        ("class", "type Shape interface", ("Area() float64",)),
        ("function", "func Add(a, b int) int", ()),
        ("function", "func (p *Point) Norm() float64", ()),
    ],
    "sample.rb": [
        ("constant", "MAX_SIZE", ()),
        (
            "class",
            "class Shape < Base",
            ("def initialize(sides)", "def area(scale = 1)", "def self.build"),
        ),
        ("function", "def add(a, b = 2)", ()),
    ],
    "sample.php": [
        ("constant", "const MAX_SIZE", ()),
        ("function", "function add(int $a, int $b = 2): int", ()),
        (
            "class",
            "class Shape extends Base implements Area",
            (
                "const SIDES",
                "public function __construct(int $sides)",
                "public function area(): float",
            ),
        ),
    ],
    "sample.sh": [
        ("constant", "readonly MAX_SIZE", ()),
        ("constant", "NAME", ()),
        ("function", "greet()", ()),
        ("function", "function cleanup", ()),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tree_sitter_table_per_table3_language(name: str) -> None:
    """One fixture file per Table 3 language: its table by hand."""
    table = symbol_table(name, (FIXTURES / name).read_text())
    assert table.status == PARSED
    assert [(s.kind, s.signature, s.members) for s in table.symbols] == EXPECTED[name]


def test_unparsable_and_unsupported_files_have_no_table() -> None:
    assert symbol_table("a.py", "def f(:\n").status == SYNTAX_ERROR
    assert symbol_table("a.kt", "fun f() {}").status == UNSUPPORTED
    assert symbol_table("README", "text").symbols == ()
    jsx = "export function App(p: Props) {\n  return <div>{p.x}</div>;\n}\n"
    assert symbol_table("a.tsx", jsx).lines() == ["function App(p: Props)"]  # TSX grammar
    # Docstrings and bodies stay out; a multi-line header folds to one line.
    src = 'def f(a,  # note\n      b=1):\n    """Doc."""\n    return a\n'
    assert symbol_table("m.py", src).lines() == ["def f(a, b=1)"]


FILES = [
    ("pkg/util.py", "MAX = 3\n\ndef helper(x: int) -> int:\n    return x * MAX\n"),
    ("pkg/shapes.js", "export class Box {\n  area() { return 1; }\n}\n"),
    ("pkg/broken.py", "def oops(:\n    pass\n"),
    ("pkg/main.py", "from pkg.util import helper\n\ndef main():\n    print(helper(21))\n"),
]


def test_prefix_layout_per_format(tiny_tokenizer) -> None:
    """The prefix's lines by hand: report in each file's comment syntax, plain lines in
    the sentinel formats; the target's own symbols and an unparsable file's stay out."""
    tok, ctx = tiny_tokenizer, FILES[:3]
    report = RepoFormat("report", RepoPrefix("paths+symbols", 10_000))
    lines = report.prefix_lines([p for p, _ in FILES], ctx, "pkg/main.py")
    assert lines == [
        "# Path: pkg/util.py\n",
        "// Path: pkg/shapes.js\n",
        "# Path: pkg/broken.py\n",
        "# Path: pkg/main.py\n",
        "# Symbols: pkg/util.py\n",
        "#   MAX\n",
        "#   def helper(x: int) -> int\n",
        "// Symbols: pkg/shapes.js\n",
        "//   class Box\n",
        "//       area()\n",
    ]
    qwen = RepoFormat("qwen2.5", RepoPrefix("paths", 10_000))
    assert qwen.prefix_lines(["a.py", "b.py"], [("a.py", "X = 1\n")], "b.py") == [
        "Path: a.py\n",
        "Path: b.py\n",
    ]
    before = prefix_stats().get(SYNTAX_ERROR, 0)
    RepoFormat("report", RepoPrefix("paths+symbols")).prefix_lines(
        ["x/other_broken.py"], [("x/other_broken.py", "class (\n")], None
    )
    assert prefix_stats()[SYNTAX_ERROR] == before + 1  # counted, path kept
    # The budget keeps whole lines, in order.
    full = report.prefix_ids([p for p, _ in FILES], ctx, tok, "pkg/main.py")
    for budget in (5, 17, 40, len(full) - 1):
        fmt = RepoFormat("report", RepoPrefix("paths+symbols", budget))
        ids = fmt.prefix_ids([p for p, _ in FILES], ctx, tok, "pkg/main.py")
        assert len(ids) <= budget and full[: len(ids)] == ids
        n = 0
        for line in lines:  # ids end exactly at a line's end
            n += len(tok.encode(line))
            if n >= len(ids):
                break
        assert n == len(ids) or not ids
    assert RepoFormat("report").prefix_ids(["a.py"], [], tok) == []
    with pytest.raises(ValueError, match="data.repo_prefix"):
        RepoPrefix("symbols")


def _engine(tok, fmt: RepoFormat):
    from zen_code_jax.infer.engine import InferenceEngine, random_params
    from zen_code_jax.model.config import get_preset

    cfg = get_preset("tiny")
    return InferenceEngine(
        random_params(cfg, 0),
        cfg,
        tok,
        max_batch_size=1,
        repo_format=fmt.name,
        repo_prefix=fmt.prefix,
    )


@pytest.mark.parametrize("mode", PREFIX_MODES)
@pytest.mark.parametrize("name", REPO_FORMATS)
def test_window_eval_and_server_are_token_identical(tiny_tokenizer, name: str, mode: str) -> None:
    """One repository window (the pipeline's `repo_windows`), the repo_completion prompt
    (evaluation) and the engine's FIM / LM prompts (the servers and LSP): equal tokens up
    to where each stops, in every format and prefix mode."""
    from zen_code_jax.eval.base import EvalContext
    from zen_code_jax.eval.repo_completion import build_prompt

    tok = tiny_tokenizer
    fmt = RepoFormat(name, RepoPrefix(mode, 64))
    (window,) = repo_windows(FILES, tok, None, 1024, fmt=fmt, repo="me/pkg")
    window = window.tolist()
    target, content = FILES[-1]
    head = [*fmt.context_ids(FILES[:-1], tok, "me/pkg", target), *fmt.header_ids(target, tok)]
    assert window[: len(head)] == head
    assert window[len(head) :] == tok.encode(content + fmt.trailer()) + [tok.eot_id]
    if mode != "none":
        assert 0 < len(fmt.prefix_ids([p for p, _ in FILES], FILES[:-1], tok, target)) <= 64
    # Evaluation: the run's config reaches EvalContext.repo_layout, then build_prompt.
    config = base_config()
    config.data.repo_prefix, config.data.repo_prefix_tokens = mode, 64
    layout = EvalContext(config=config, tokenizer=tok, repo_format=name).repo_layout()
    assert layout == fmt
    k = content.index("print")
    ex = {
        "repo": "me/pkg",
        "path": target,
        "in_file": content[:k],
        "context_files": [list(f) for f in FILES[:-1]],
    }
    prompt = build_prompt(ex, "cross_file_first", layout, tok, 1 << 20)
    assert prompt == [*head, *tok.encode(content[:k])]
    # The engine (servers, LSP): FIM and left-to-right prompts.
    engine = _engine(tok, fmt)
    assert engine.repo_format == fmt
    fim = engine.fim_prompt_ids(content[:k], content[k:], "psm", FILES[:-1], target, "me/pkg")
    assert fim[: len(head)] == head and fim[len(head)] == tok.fim_prefix_id
    assert engine.repo_format.lm_prompt_ids(FILES[:-1], target, content[:k], tok, "me/pkg") == (
        prompt
    )


def test_prefix_windows_fit_and_reserve(tiny_tokenizer, stdlib_records) -> None:
    """With a prefix every window still fits seq_len and starts with its own prefix; the
    budget over a quarter of the window is refused with the fix."""
    tok = tiny_tokenizer
    files = [(r["path"], r["content"]) for r in stdlib_records[:6]]
    fmt = RepoFormat("qwen2.5", RepoPrefix("paths+symbols", 64))
    wins = repo_windows(files, tok, 3, 512, fim_rate=0.5, spm_rate=0.5, fmt=fmt, repo="r")
    assert len(wins) > 3 and all(len(w) <= 512 for w in wins)
    assert all(w[0] == tok.repo_name_id for w in wins)
    with pytest.raises(ValueError, match="repo_prefix_tokens"):
        repo_windows(files, tok, 3, 128, fmt=RepoFormat("report", RepoPrefix("paths", 64)))


def test_run_facts_carry_the_prefix(tiny_tokenizer) -> None:
    """A run's data.repo_prefix reaches the engine's facts (what `from_run` passes on)."""
    from zen_code_jax.resolve import _facts

    config = base_config()
    config.data.repo_prefix, config.data.repo_prefix_tokens = "paths+symbols", 96
    facts = _facts(None, None, tiny_tokenizer, config, None)  # type: ignore[arg-type]
    assert facts["repo_prefix"] == RepoPrefix("paths+symbols", 96)
    assert _facts(None, None, tiny_tokenizer, None, None)["repo_prefix"] == RepoPrefix()  # type: ignore[arg-type]


def test_pipeline_windows_open_with_the_prefix(fake_corpus) -> None:
    """data.repo_prefix reaches the pipeline's repository windows (and stays off by default)."""
    from zen_code_jax.data.pipeline import make_dataset

    tok = fake_corpus.tokenizer
    cfg = base_config()
    cfg.data.mode, cfg.fim.rate = "repo", 0.0
    plain = next(make_dataset(fake_corpus, cfg, seq_len=512, batch_size=2, seed=1))
    cfg.data.repo_prefix, cfg.data.repo_prefix_tokens = "paths+symbols", 96
    batch = next(make_dataset(fake_corpus, cfg, seq_len=512, batch_size=2, seed=1))
    starts = [
        tok.decode(batch.inputs[r][batch.segment_ids[r] == 1][:40].tolist()) for r in range(2)
    ]
    assert all(s.startswith("# Path: ") for s in starts), starts
    assert not any(
        tok.decode(plain.inputs[r][plain.segment_ids[r] == 1][:8].tolist()).startswith("# Path")
        for r in range(2)
    )
    # Deterministic, and a restore continues with exactly the batches that followed.
    cfg.fim.rate = 0.5
    it = make_dataset(fake_corpus, cfg, seq_len=512, batch_size=2, seed=1)
    first = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    rest = [next(it) for _ in range(2)]
    again = make_dataset(fake_corpus, cfg, seq_len=512, batch_size=2, seed=1)
    assert all(
        np.array_equal(a.inputs, b.inputs) for a, b in zip(first, [next(again) for _ in range(2)])
    )
    resumed = make_dataset(fake_corpus, cfg, seq_len=512, batch_size=2, seed=1)
    resumed.set_state(state)
    assert all(np.array_equal(a.inputs, next(resumed).inputs) for a in rest)
