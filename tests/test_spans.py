"""FIM span choice (`fim.span`, data/spans.py): line spans on line boundaries, ast spans
whole syntax nodes (checked by re-parsing), exact reconstruction, nested arms over 10,000
records per span mode, and determinism across worker counts and a restore."""

from __future__ import annotations

import ast
import json
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeCorpus, record
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_code_jax.config import base_config
from zen_code_jax.data.batch import FIELDS
from zen_code_jax.data.fim import draw_fim, fim_fragment, record_rng, unfim, unit_draw
from zen_code_jax.data.fim_context import code_grammar, grammar_code
from zen_code_jax.data.pipeline import FileToSegments, make_dataset
from zen_code_jax.data.repo_window import file_segments, repo_windows
from zen_code_jax.data.spans import SPANS, line_boundaries, span_stats
from zen_code_jax.data.symbols import grammar_of, parser_for

FIXTURES = Path(__file__).parent / "fixtures" / "symbols"
RATES = [0.25, 0.5, 0.75]


def _functions(n: int) -> list[str]:
    """n stdlib function sources (dedented, ASCII, each a whole tree on its own)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "lib2to3"}
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        src = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        lines = src.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno < 40:
                text = textwrap.dedent("".join(lines[node.lineno - 1 : node.end_lineno]))
                if (
                    not text.isascii()
                    or parser_for("Python").parse(text.encode()).root_node.has_error
                ):
                    continue
                out.append(text)
                if len(out) == n:
                    return out
    raise AssertionError("the stdlib has fewer functions than asked for")


@pytest.fixture(scope="module")
def functions() -> list[str]:
    """1,000 stdlib functions (10,000 records reuse them under 10,000 distinct paths, so
    each record has its own draw)."""
    return _functions(1_000)


def _node_extents(text: str, grammar: str) -> set[tuple[int, int]]:
    """Byte extents of every named node below the root, by re-parsing with a tree cursor
    (an independent walk from `spans.node_spans`)."""
    tree = parser_for(grammar).parse(text.encode("utf-8"))
    assert not tree.root_node.has_error
    out, cursor = set(), tree.walk()
    root = tree.root_node
    visited = False
    while True:
        if not visited:
            node = cursor.node
            if node.is_named and node != root:
                out.add((node.start_byte, node.end_byte))
            if cursor.goto_first_child():
                continue
        if cursor.goto_next_sibling():
            visited = False
            continue
        if not cursor.goto_parent():
            return out
        visited = True


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab \n\t("), max_size=200),
    seed=st.integers(0, 2**32 - 1),
)
def test_line_spans_start_and_end_on_line_boundaries(text: str, seed: int) -> None:
    draw = draw_fim(record_rng(seed, 0))
    prefix, middle, suffix = draw.split(text, "line")
    assert prefix + middle + suffix == text
    bounds = set(line_boundaries(text))
    assert len(prefix) in bounds and len(prefix) + len(middle) in bounds
    # the nearest boundary to each character cut
    a, b = draw.points(len(text))
    for cut, got in ((a, len(prefix)), (b, len(prefix) + len(middle))):
        assert abs(got - cut) == min(abs(x - cut) for x in bounds)


def test_ast_spans_are_whole_nodes_per_table3_language() -> None:
    """Every fixture language: for 200 draws each, the middle is exactly a named node of
    the re-parsed file, and prefix + middle + suffix is the file."""
    for path in sorted(FIXTURES.iterdir()):
        text, grammar = path.read_text(), grammar_of(path.name)
        assert grammar is not None and text.isascii()
        extents = _node_extents(text, grammar)
        for seed in range(200):
            draw = unit_draw(seed, "f", path.name)
            prefix, middle, suffix = draw.split(text, "ast", grammar)
            assert prefix + middle + suffix == text
            assert (len(prefix), len(prefix) + len(middle)) in extents, (path.name, seed)


def test_ast_spans_on_stdlib_functions_and_non_ascii(functions) -> None:
    """Whole nodes on 500 stdlib functions, by byte extents (so multibyte text counts)."""
    texts = [*functions[:500], 'def f():\n    return "héllo wörld" + ñ\n']
    for i, text in enumerate(texts):
        extents = _node_extents(text, "Python")
        draw = unit_draw(11, "fn", str(i))
        prefix, middle, suffix = draw.split(text, "ast", "Python")
        assert prefix + middle + suffix == text
        a = len(prefix.encode())
        assert (a, a + len(middle.encode())) in extents


def test_ast_falls_back_to_char_and_counts() -> None:
    before = span_stats()
    broken, other = "def f(:\n    return (\n", "fun main() { println(1) }\n"
    for i in range(20):
        draw = unit_draw(0, str(i))
        assert draw.split(broken, "ast", "Python") == draw.split(broken)
        assert draw.split(other, "ast", grammar_of("a.kt")) == draw.split(other)
    after = span_stats()
    assert after.get("syntax_error", 0) == before.get("syntax_error", 0) + 20
    assert after.get("unsupported", 0) == before.get("unsupported", 0) + 20
    with pytest.raises(ValueError, match="fim.span"):
        draw_fim(record_rng(0, 0)).split("x", "token")
    # The packer's flag carries a fragment's grammar at fim.span="ast".
    assert grammar_code(False, "a.py") == 0 and grammar_code(True, "a.kt") == 1
    assert code_grammar(grammar_code(True, "a/b.rs")) == "Rust"


def _nested(outputs: list[list], rates: list[float]) -> None:
    """FIM(r1) subset of FIM(r2) for r1 < r2, and a unit FIM in both is identical in both."""
    for lo in range(len(rates)):
        for hi in range(lo + 1, len(rates)):
            for a, b in zip(outputs[lo], outputs[hi]):
                if a[0]:
                    assert b[0] and a[1] == b[1]


@pytest.mark.parametrize("span", SPANS)
def test_arms_nested_over_10000_records_per_span(tiny_tokenizer, functions, span: str) -> None:
    """Common random numbers for each span mode: FIM(25%) ⊂ FIM(50%) ⊂ FIM(75%) record by
    record with the same tokens (document level), per fragment (context level) and per
    repository window; and every span mode FIMs the same units as `char` does."""
    tok = tiny_tokenizer
    records = [
        {"repo": f"r{i % 37}", "path": f"p{i}.py", "content": functions[i % len(functions)]}
        for i in range(10_000)
    ]
    outs = []
    for rate in RATES:
        fn = FileToSegments(tok, 512, rate, 0.5, seed=7, span=span)
        rows = []
        for r in records:
            segs = fn(r)
            rows.append((int(segs[0][0] == tok.fim_prefix_id), [x.tolist() for x in segs]))
        outs.append(rows)
    counts = [sum(f for f, _ in o) for o in outs]
    assert counts[0] < counts[1] < counts[2]
    _nested(outs, RATES)
    char = FileToSegments(tok, 512, 0.5, 0.5, seed=7)
    assert [int(char(r)[0][0] == tok.fim_prefix_id) for r in records[:2000]] == [
        f for f, _ in outs[1][:2000]
    ]
    # Context level: fragments, grammar from the packer's flag.
    frags = [tok.encode(t) + [tok.eot_id] for t in functions]
    outs = [
        [
            (int(o is not None), o)
            for o in (
                fim_fragment(
                    f, tok, unit_draw(7, "context", str(f)), rate, 0.5, span=span, grammar="Python"
                )
                for f in frags
            )
        ]
        for rate in RATES
    ]
    _nested(outs, RATES)
    # Repository windows: one draw per (repository, window).
    files = [(r["path"], r["content"]) for r in records[:40]]
    wins = [
        [
            (int(tok.fim_prefix_id in w.tolist()), w.tolist())
            for w in repo_windows(
                files, tok, 3, 256, fim_rate=rate, spm_rate=0.5, repo="r", span=span
            )
        ]
        for rate in RATES
    ]
    _nested(wins, RATES)


def test_document_level_pieces_reconstruct(tiny_tokenizer, functions) -> None:
    """file_segments with each span: the FIM'd file, put back together, is the file."""
    tok = tiny_tokenizer
    for span in SPANS:
        for i, text in enumerate(functions[:200]):
            draw = unit_draw(1, "doc", str(i))
            segs = file_segments(text, tok, draw, 4096, fim_rate=1.0, spm_rate=0.5, span=span,
                                 path="m.py")  # fmt: skip
            p, m, s, mode = unfim(np.concatenate(segs).tolist(), tok)
            pre, mid, suf = draw.split(text, span, "Python")
            assert (p, m, s) == (
                (tok.encode(pre), tok.encode(mid), tok.encode(suf))
                if mode == "psm"
                else ([], tok.encode(pre) + tok.encode(mid), tok.encode(suf))
            )


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(getattr(x, k), getattr(y, k)) for k in FIELDS) for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def small_corpus(tiny_tokenizer, functions) -> FakeCorpus:
    """Short whole files (so context-level fragments parse) plus a few long stdlib-like ones."""
    recs = [record(f"r{i % 5}", f"pkg/f{i}.py", t) for i, t in enumerate(functions[:300])]
    return FakeCorpus(tiny_tokenizer, recs, heldout=recs[:4])


@pytest.mark.parametrize("level", ["document", "context"])
def test_span_pipeline_deterministic_across_workers_and_restore(small_corpus, level) -> None:
    """fim.span="ast": the same batches with 0 and 2 worker processes, and after a restore."""
    cfg = base_config()
    cfg.fim.level, cfg.fim.span = level, "ast"
    make = lambda **kw: make_dataset(small_corpus, cfg, seq_len=128, batch_size=2, seed=5, **kw)  # noqa: E731
    it = make(num_workers=0)
    first = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(it.get_state()))
    rest = [next(it) for _ in range(3)]
    assert any((b.inputs == small_corpus.tokenizer.fim_prefix_id).any() for b in first + rest)
    resumed = make(num_workers=0)
    resumed.set_state(state)
    assert _same([next(resumed) for _ in range(3)], rest)
    workers = make(num_workers=2)
    assert _same([next(workers) for _ in range(7)], first + rest)
    del workers
    # Another span gives other middles on the same units.
    cfg.fim.span = "char"
    assert not _same([next(make(num_workers=0)) for _ in range(4)], first)
