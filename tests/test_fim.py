"""FIM: exact round-trip (character and token level), prompt/training agreement, rates."""

from __future__ import annotations

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_code_jax.data.fim import (
    apply_fim,
    arrange,
    draw_mode,
    fim_parts,
    fim_prompt_tokens,
    fim_tokens,
    record_rng,
    split_text,
    unfim,
)
from zen_code_jax.data.pipeline import FileToSegments
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
    mode, p, m, s = fim_parts(text, tok, record_rng(seed, 1), 1.0, 1.0 if spm else 0.0)
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
    ids, mode = apply_fim(text, tok, record_rng(0, 0), 0.0, 0.0)
    assert mode is None and ids == tok.encode(text) + [tok.eot_id]
    assert not set(ids[:-1]) & set(tok.special_ids)


class _Draw:
    def __init__(self, rate: float, spm_rate: float):
        self.rate, self.spm_rate = rate, spm_rate

    def __call__(self, record: dict, rng: np.random.Generator) -> str:
        return str(draw_mode(rng, self.rate, self.spm_rate))


@pytest.mark.parametrize("rate,spm_rate", [(0.5, 0.5), (0.3, 0.8)])
def test_fim_rates_through_grain(tok: Tokenizer, rate: float, spm_rate: float) -> None:
    """Observed FIM and SPM rates over 10,000 records are within 2% of the config.

    The draw is checked through Grain's random_map (the pipeline's path); the FIM share is
    also read off the produced tokens (a leading <|fim_prefix|>). SPM cannot be read off
    tokens alone: PSM with an empty prefix is the same sequence.
    """
    n = 10_000
    records = [{"content": f"x{i} = {i}\n"} for i in range(n)]
    modes = grain.MapDataset.source(records).random_map(_Draw(rate, spm_rate), seed=1234)
    drawn = [modes[i] for i in range(n)]
    fim = sum(m != "None" for m in drawn)
    spm = sum(m == "spm" for m in drawn)
    assert abs(fim / n - rate) < 0.02
    assert abs(spm / fim - spm_rate) < 0.02
    segs = grain.MapDataset.source(records).random_map(
        FileToSegments(tok, 128, rate, spm_rate), seed=1234
    )
    produced = [segs[i][0] for i in range(0, n, 5)]  # every 5th record: the same draws
    assert [int(s[0] == tok.fim_prefix_id) for s in produced] == [
        int(m != "None") for m in drawn[::5]
    ]


def test_draw_depends_only_on_seed_and_index(tok: Tokenizer) -> None:
    """The same element gets the same FIM whatever the read order or slicing."""
    records = [{"content": f"value_{i} = {i} * 2\n"} for i in range(64)]
    ds = grain.MapDataset.source(records).random_map(FileToSegments(tok, 128, 0.5, 0.5), seed=7)
    forward = [ds[i][0].tolist() for i in range(64)]
    backward = [ds[i][0].tolist() for i in reversed(range(64))][::-1]
    sliced = [x[0].tolist() for k in range(4) for x in ds[k::4]]
    assert forward == backward
    assert sorted(map(tuple, sliced)) == sorted(map(tuple, forward))
    assert ds[1::4][2][0].tolist() == forward[9]
    # Another seed changes the draws.
    other = grain.MapDataset.source(records).random_map(FileToSegments(tok, 128, 0.5, 0.5), seed=8)
    assert [other[i][0].tolist() for i in range(64)] != forward


def test_bad_rates_are_rejected() -> None:
    with pytest.raises(ValueError, match="fim.rate"):
        draw_mode(np.random.default_rng(0), 1.5, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_repo_prompt_matches_repo_training_window(tok: Tokenizer, seed: int) -> None:
    """Infilling with repository context builds exactly the training window's prefix."""
    files = [
        ("pkg/util.py", "def helper(x):\n    return x * 2\n"),
        ("pkg/main.py", "from pkg.util import helper\n\nprint(helper(21))\n"),
    ]
    (window,) = repo_windows(files, tok, record_rng(seed, 5), 256, fim_rate=1.0, spm_rate=0.5)
    # Replay the same draws to learn the split the window used.
    rng = record_rng(seed, 5)
    mode = draw_mode(rng, 1.0, 0.5)
    prefix, middle, suffix = split_text(files[1][1] + "\n", rng)
    prompt = repo_fim_prompt_tokens(files[:1], "pkg/main.py", prefix, suffix, mode, tok)
    window = window.tolist()
    assert window[: len(prompt)] == prompt
    assert window[len(prompt) :] == tok.encode(middle) + [tok.eot_id]
