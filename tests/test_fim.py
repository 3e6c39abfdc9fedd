"""FIM: exact round-trip (character and token level), prompt/training agreement, rates."""

from __future__ import annotations

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_code_jax.data.fim import (
    FimDraw,
    apply_fim,
    arrange,
    draw_fim,
    fim_fragment,
    fim_parts,
    fim_prompt_tokens,
    fim_tokens,
    record_rng,
    split_text,
    unfim,
    unit_draw,
)
from zen_code_jax.data.pipeline import FileToSegments
from zen_code_jax.data.repo_format import REPO_FORMATS, RepoFormat, comment_header
from zen_code_jax.data.repo_window import repo_fim_prompt_tokens, repo_windows
from zen_code_jax.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_tokenizer) -> Tokenizer:
    """The shared stdlib tokenizer (tests/conftest.py): FIM holds for any tokenizer."""
    return tiny_tokenizer


FP, FM, FS, EOT = object(), object(), object(), object()


def _char_roundtrip(seq: list, mode: str) -> str:
    """Remove the sentinels from a character-level FIM layout and put the file back together."""
    assert seq[0] is FP and seq[-1] is EOT
    i_s, i_m = seq.index(FS), seq.index(FM)
    if mode == "psm":
        prefix, suffix, middle = seq[1:i_s], seq[i_s + 1 : i_m], seq[i_m + 1 : -1]
        return "".join(prefix + middle + suffix)
    assert i_s == 1
    suffix, prefix_middle = seq[2:i_m], seq[i_m + 1 : -1]
    return "".join(prefix_middle + suffix)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=300), seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["psm", "spm"])
)
def test_char_level_roundtrip(text: str, seed: int, mode: str) -> None:
    prefix, middle, suffix = split_text(text, record_rng(seed, 0))
    assert prefix + middle + suffix == text
    seq = arrange(
        list(prefix),
        list(middle),
        list(suffix),
        mode,
        fim_prefix=FP,
        fim_middle=FM,
        fim_suffix=FS,
        eot=EOT,
    )
    assert sum(x is FP for x in seq) == sum(x is FS for x in seq) == sum(x is FM for x in seq) == 1
    assert _char_roundtrip(seq, mode) == text


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(max_size=200)
    | st.sampled_from(["<|fim_prefix|>x<|fim_middle|>y<|endoftext|>", "\t  \n\r\n😀▁a"]),
    seed=st.integers(0, 2**32 - 1),
    spm=st.booleans(),
)
def test_token_level_roundtrip(tok: Tokenizer, text: str, seed: int, spm: bool) -> None:
    draw = draw_fim(record_rng(seed, 1))
    mode, p, m, s = fim_parts(text, tok, draw, 1.0, 1.0 if spm else 0.0)
    assert mode == ("spm" if spm else "psm")
    ids = fim_tokens(p, m, s, mode, tok)
    assert ids[-1] == tok.eot_id
    for sentinel in (tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id, tok.eot_id):
        assert ids.count(sentinel) == 1  # literal sentinel spellings in text stay text
    p2, m2, s2, mode2 = unfim(ids, tok)
    # With an empty prefix PSM and SPM are the same sequence; the file is still recovered.
    assert mode2 == mode or not p
    assert tok.decode(p2 + m2 + s2) == text


def test_layouts_are_exact(tok: Tokenizer) -> None:
    p, m, s = [11, 12], [21], [31, 32, 33]
    fp, fm, fs, eot = tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id, tok.eot_id
    assert fim_tokens(p, m, s, "psm", tok) == [fp, 11, 12, fs, 31, 32, 33, fm, 21, eot]
    assert fim_tokens(p, m, s, "spm", tok) == [fp, fs, 31, 32, 33, fm, 11, 12, 21, eot]
    with pytest.raises(ValueError, match="psm"):
        fim_tokens(p, m, s, "pms", tok)


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_prompt_is_training_prefix(tok: Tokenizer, mode: str) -> None:
    """Inference prompt == training tokens up to where the middle starts."""
    prefix, middle, suffix = "def add(a, b):\n    ", "return a + b", "\n\nprint(add(1, 2))\n"
    train = fim_tokens(tok.encode(prefix), tok.encode(middle), tok.encode(suffix), mode, tok)
    prompt = fim_prompt_tokens(prefix, suffix, mode, tok)
    assert train[: len(prompt)] == prompt
    assert train[len(prompt) :] == tok.encode(middle) + [tok.eot_id]


def test_literal_sentinel_text_never_becomes_sentinel(tok: Tokenizer) -> None:
    text = "s = '<|fim_prefix|><|fim_suffix|><|fim_middle|><|endoftext|>'\n"
    ids, mode = apply_fim(text, tok, draw_fim(record_rng(0, 0)), 0.0, 0.0)
    assert mode is None and ids == tok.encode(text) + [tok.eot_id]
    assert not set(ids[:-1]) & set(tok.special_ids)


@pytest.mark.parametrize("rate,spm_rate", [(0.5, 0.5), (0.3, 0.8)])
def test_fim_rates_per_file(tok: Tokenizer, rate: float, spm_rate: float) -> None:
    """Observed FIM and SPM rates over 10,000 files are within 2% of the config, and the
    pipeline's transform produces exactly the drawn decision (a leading <|fim_prefix|>)."""
    n = 10_000
    records = [{"repo": "r", "path": f"f{i}.py", "content": f"x{i} = {i}\n"} for i in range(n)]
    drawn = [str(unit_draw(1234, "file", "r", f"f{i}.py").mode(rate, spm_rate)) for i in range(n)]
    fim = sum(m != "None" for m in drawn)
    spm = sum(m == "spm" for m in drawn)
    assert abs(fim / n - rate) < 0.02
    assert abs(spm / fim - spm_rate) < 0.02
    fn = FileToSegments(tok, 128, rate, spm_rate, seed=1234)
    produced = [fn(records[i])[0] for i in range(0, n, 5)]
    assert [int(s[0] == tok.fim_prefix_id) for s in produced] == [
        int(m != "None") for m in drawn[::5]
    ]


def test_draw_depends_only_on_seed_and_file(tok: Tokenizer) -> None:
    """The same file gets the same FIM whatever the read order or slicing of the stream."""
    records = [{"repo": "r", "path": f"{i}.py", "content": f"v_{i} = {i} * 2\n"} for i in range(64)]
    fn = FileToSegments(tok, 128, 0.5, 0.5, seed=7)
    ds = grain.MapDataset.source(records).map(fn)
    forward = [ds[i][0].tolist() for i in range(64)]
    backward = [ds[i][0].tolist() for i in reversed(range(64))][::-1]
    assert forward == backward and ds[1::4][2][0].tolist() == forward[9]
    assert [fn(r)[0].tolist() for r in records[::-1]][::-1] == forward
    other = FileToSegments(tok, 128, 0.5, 0.5, seed=8)
    assert [other(r)[0].tolist() for r in records] != forward


def _nested(outputs: list[list], rates: list[float]) -> None:
    """FIM(r1) subset of FIM(r2) for r1 < r2, and a unit FIM in both is identical in both."""
    for lo in range(len(rates)):
        for hi in range(lo + 1, len(rates)):
            for a, b in zip(outputs[lo], outputs[hi]):
                if a[0]:
                    assert b[0] and a[1] == b[1]


def test_arms_are_nested_over_10000_records(tok: Tokenizer) -> None:
    """Common random numbers: FIM(25%) ⊂ FIM(50%) ⊂ FIM(75%) record by record, with the same
    mode and split, for documents of one piece, long multi-piece files, and fragments."""
    rates = [0.25, 0.5, 0.75]
    rng = np.random.default_rng(0)
    words = ["def", "x", "=", "return", "(", ")", ":", "\n", "    ", "1", "+", "self"]
    records = [
        {"repo": f"r{i % 37}", "path": f"p{i}.py", "content": "".join(rng.choice(words, 30))}
        for i in range(10_000)
    ]
    records[:25] = [
        {"repo": "long", "path": f"l{i}.py", "content": "".join(rng.choice(words, 900))}
        for i in range(25)
    ]
    outs = []
    for rate in rates:
        fn = FileToSegments(tok, 128, rate, 0.5, seed=7)
        rows = []
        for r in records:
            segs = fn(r)
            rows.append((int(segs[0][0] == tok.fim_prefix_id), [x.tolist() for x in segs]))
        outs.append(rows)
    assert all(len(outs[0][i][1]) > 3 for i in range(25))  # long files: many pieces
    counts = [sum(f for f, _ in o) for o in outs]
    assert counts[0] < counts[1] < counts[2]
    _nested(outs, rates)
    # Context level: the same property per packed fragment.
    frags = [tok.encode(r["content"]) + [tok.eot_id] for r in records[25:2025]]
    outs = [
        [
            (int(o is not None), o)
            for o in (
                fim_fragment(f, tok, unit_draw(7, "context", str(f)), rate, 0.5) for f in frags
            )
        ]
        for rate in rates
    ]
    _nested(outs, rates)
    # Repository windows: one draw per (repository, window).
    files = [(r["path"], r["content"]) for r in records[:6]]
    wins = [
        [
            (int(tok.fim_prefix_id in w.tolist()), w.tolist())
            for w in repo_windows(files, tok, 3, 128, fim_rate=rate, spm_rate=0.5, repo="long")
        ]
        for rate in rates
    ]
    _nested(wins, rates)


def test_draw_points_are_uniform_and_sorted() -> None:
    d = FimDraw(0.1, 0.9, 0.75, 0.25)
    assert d.points(3) == (1, 3) and d.points(0) == (0, 0)
    assert d.mode(0.2, 0.5) == "psm" and d.mode(0.1, 0.5) is None
    n = 7
    cuts = np.array([draw_fim(record_rng(0, i)).points(n) for i in range(20_000)])
    assert (cuts[:, 0] <= cuts[:, 1]).all() and cuts.min() == 0 and cuts.max() == n
    # Two sorted uniforms over n + 1 cuts: P(lo = k) = (2 (n - k) + 1) / (n + 1)^2.
    freq = np.bincount(cuts[:, 0], minlength=n + 1) / len(cuts)
    expect = (2 * (n - np.arange(n + 1)) + 1) / (n + 1) ** 2
    assert np.abs(freq - expect).max() < 0.01


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=120), seed=st.integers(0, 2**32 - 1), eot=st.booleans())
def test_fragment_fim_keeps_length(tok: Tokenizer, text: str, seed: int, eot: bool) -> None:
    """Context-level FIM keeps the fragment's length: a truncated suffix or <|fim_pad|>."""
    ids = tok.encode(text) + ([tok.eot_id] if eot else [])
    draw = draw_fim(record_rng(seed, 0))
    out = fim_fragment(ids, tok, draw, 1.0, 0.5)
    if out is None:
        return
    assert len(out) == len(ids) and out[0] == tok.fim_prefix_id
    assert (out[-1] == tok.eot_id) == eot
    n_pad = out.count(tok.fim_pad_id)
    p, m, s, _ = unfim([t for t in out if t != tok.fim_pad_id], tok)
    pre, mid, suf = draw.split(text)
    full_s = tok.encode(suf)
    # The parts are the separately encoded split; only the suffix's end may be dropped
    # (when re-encoding grew the fragment), and padding only when nothing was dropped.
    assert p + m == tok.encode(pre) + tok.encode(mid)
    assert s == full_s[: len(s)] and (n_pad == 0 or s == full_s)


def test_bad_rates_are_rejected() -> None:
    with pytest.raises(ValueError, match="fim.rate"):
        draw_fim(np.random.default_rng(0)).mode(1.5, 0.5)


@pytest.mark.parametrize("fmt", REPO_FORMATS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repo_prompt_matches_repo_training_window(tok: Tokenizer, fmt: str, seed: int) -> None:
    """Infilling with repository context builds exactly the training window up to the
    middle, in every repository format: one implementation (`RepoFormat`) for both."""
    files = [
        ("pkg/util.py", "def helper(x):\n    return x * 2\n"),
        ("pkg/main.py", "from pkg.util import helper\n\nprint(helper(21))\n"),
    ]
    f = RepoFormat(fmt)
    (window,) = repo_windows(
        files, tok, seed, 256, fim_rate=1.0, spm_rate=0.5, fmt=f, repo="me/pkg"
    )
    draw = unit_draw(seed, "repo", "me/pkg", "0")
    mode = draw.mode(1.0, 0.5)
    prefix, middle, suffix = draw.split(files[1][1] + f.trailer())
    suffix = suffix[: len(suffix) - len(f.trailer())] if suffix.endswith(f.trailer()) else None
    if suffix is None:  # the split fell inside the trailer: no serving prompt spells that
        return
    prompt = f.fim_prompt_ids(files[:1], "pkg/main.py", prefix, suffix, mode, tok, "me/pkg")
    window = window.tolist()
    assert window[: len(prompt)] == prompt
    assert window[len(prompt) :] == tok.encode(middle) + [tok.eot_id]
    # The sentinels sit inside the target file: the context and its header come first.
    head = f.context_ids(files[:1], tok, "me/pkg") + f.header_ids("pkg/main.py", tok)
    assert window[: len(head)] == head and window[len(head)] == tok.fim_prefix_id
    if fmt == "report":
        old = repo_fim_prompt_tokens(files[:1], "pkg/main.py", prefix, suffix, mode, tok)
        assert old == prompt


def test_repo_format_layouts(tok: Tokenizer) -> None:
    """Each format's plain text, token for token, and the report's comment per language."""
    files = [("a/x.c", "int x;"), ("a/y.py", "y = 1")]
    rn, fs = tok.repo_name_id, tok.file_sep_id
    enc = tok.encode
    assert RepoFormat("qwen2.5").context_ids(files, tok, "me/a") == [
        rn, *enc("me/a\n"), fs, *enc("a/x.c\n"), *enc("int x;\n"), fs, *enc("a/y.py\n"),
        *enc("y = 1\n"),
    ]  # fmt: skip
    assert RepoFormat("starcoder2").context_ids(files, tok, "me/a") == [
        rn, *enc("me/a"), fs, *enc("a/x.c\n"), *enc("int x;"), fs, *enc("a/y.py\n"),
        *enc("y = 1"),
    ]  # fmt: skip
    assert tok.decode(RepoFormat("report").context_ids(files, tok, "me/a")) == (
        "// File: a/x.c\nint x;\n# File: a/y.py\ny = 1\n"
    )
    assert comment_header("q.sql") == "-- File: q.sql\n"
    assert comment_header("p.html") == "<!-- File: p.html -->\n"
    assert comment_header("noext") == "# File: noext\n"
    with pytest.raises(ValueError, match="data.repo_format"):
        RepoFormat("codellama")
