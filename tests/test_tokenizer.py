"""Tokenizer: exact round-trip for any text, atomic sentinels, save/load, vocab checks."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_code_jax.data import tokenizer as tokenizer_mod
from zen_code_jax.data.hf_tokenizer import HFTokenizer
from zen_code_jax.data.tokenizer import (
    ENDOFTEXT,
    FILE_SEP,
    FIM_MIDDLE,
    FIM_PAD,
    FIM_PREFIX,
    FIM_SUFFIX,
    MIN_VOCAB_SIZE,
    REPO_NAME,
    SPECIAL_TOKENS,
    Tokenizer,
)
from zen_code_jax.data.tokenizer_base import TokenizerError
from zen_code_jax.data.tokenizer_load import load_tokenizer
from zen_code_jax.model.config import get_preset

VOCAB = 1024


def _training_texts() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    # Put the literal sentinel spellings into the training text: they must still never
    # become special ids.
    texts.append("x = '<|fim_prefix|><|endoftext|>'\n" * 50)
    return texts


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok")
    return Tokenizer.train(_training_texts(), VOCAB, out)


TRICKY = [
    "",
    "def f(x):\n\treturn x  # tab\n",
    "    \n        \n\t \t",
    "a\r\nb\r\n\r\n",
    "\x00nul\x00",
    "\ufeffBOM at start",
    "emoji 😀👩‍👩‍👧 and CJK 漢字 and RTL שלום",
    "digits 1234567890 3.14159",
    "meta space \u2581 in text \u2581\u2581 and ▁▁ at end▁",
    " leading space",
    "trailing spaces   ",
    "".join(chr(c) for c in range(1, 128)),
    "<|fim_prefix|>literal<|fim_suffix|>x<|fim_middle|><|endoftext|><|fim_pad|>",
    "\U0010ffff\ue000 private use",
]


@pytest.mark.parametrize("text", TRICKY)
def test_roundtrip_tricky(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not set(ids) & set(tok.special_ids)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(
            st.characters(codec="utf-8"),
            st.sampled_from(list(" \t\n\r\x00\ufeff\u2581<|>_") + ["😀"]),
        ),
        max_size=200,
    )
)
def test_roundtrip_hypothesis(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.sp_vocab_size for i in ids)
    assert not set(ids) & set(tok.special_ids)


def test_roundtrip_stdlib_file(tok: Tokenizer) -> None:
    import textwrap

    text = Path(textwrap.__file__).read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # A trained BPE compresses code well beyond bytes (byte fallback alone would be 1.0).
    assert len(text.encode()) / len(ids) > 2.0


def test_sentinels_are_atomic(tok: Tokenizer) -> None:
    ids = {ENDOFTEXT: tok.eot_id, FIM_PREFIX: tok.fim_prefix_id, FIM_MIDDLE: tok.fim_middle_id}
    ids.update({FIM_SUFFIX: tok.fim_suffix_id, FIM_PAD: tok.fim_pad_id})
    ids.update({REPO_NAME: tok.repo_name_id, FILE_SEP: tok.file_sep_id})
    assert len(set(ids.values())) == 7
    assert tuple(ids[t] for t in SPECIAL_TOKENS) == tok.special_ids
    for spelling, i in ids.items():
        # Decoding the id gives its spelling; encoding the spelling gives ordinary pieces.
        assert tok.decode([i]) == spelling
        enc = tok.encode(spelling)
        assert i not in enc and len(enc) > 1
        assert tok.decode(enc) == spelling
        assert tok.decode([i], skip_special=True) == ""
    a, b = tok.encode("x = 1\n"), tok.encode("y = 2\n")
    seq = [tok.fim_prefix_id, *a, tok.fim_suffix_id, *b, tok.fim_middle_id, tok.eot_id]
    assert tok.decode(seq) == f"{FIM_PREFIX}x = 1\n{FIM_SUFFIX}y = 2\n{FIM_MIDDLE}{ENDOFTEXT}"
    assert tok.decode(seq, skip_special=True) == "x = 1\ny = 2\n"
    assert tok.pad_id not in tok.special_ids or tok.pad_id == tok.fim_pad_id


def test_tokenizer_without_repo_tokens_loads_and_names_the_fix(monkeypatch, tmp_path) -> None:
    """A tokenizer trained before <|repo_name|>/<|file_sep|> existed (a cached corpus) still
    loads for file mode; asking it for a repository token raises, naming the fix."""
    monkeypatch.setattr(tokenizer_mod, "SPECIAL_TOKENS", tokenizer_mod.REQUIRED_TOKENS)
    old = Tokenizer.train(["def f(x):\n    return x\n"] * 50, MIN_VOCAB_SIZE + 20, tmp_path)
    monkeypatch.undo()
    loaded = load_tokenizer(tmp_path)
    assert loaded.fim_pad_id == old.fim_pad_id and len(loaded.special_ids) == 5
    with pytest.raises(TokenizerError, match="re-prepare"):
        _ = loaded.file_sep_id


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    texts = TRICKY + ["plain text", "more\u2581meta"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_save_load_fingerprint(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    assert tok2.fingerprint() == tok.fingerprint()
    assert tok2.vocab_size == tok.vocab_size == VOCAB
    text = TRICKY[6] + TRICKY[8]
    assert tok2.encode(text) == tok.encode(text)
    # A corrupt model file is detected.
    (tmp_path / "tokenizer.model").write_bytes(
        Tokenizer.train(["abc def\n" * 100], 300).__dict__["_proto"]
    )
    with pytest.raises(TokenizerError, match="fingerprint"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(tmp_path / "missing")


def test_training_is_deterministic(tok: Tokenizer) -> None:
    again = Tokenizer.train(_training_texts(), VOCAB)
    assert again.fingerprint() == tok.fingerprint()


def test_check_compatible(tok: Tokenizer) -> None:
    tok.check_compatible(get_preset("tiny", vocab_size=VOCAB))
    with pytest.raises(TokenizerError, match=r"1024.*151936|151936.*1024") as e:
        tok.check_compatible(get_preset("zen_code_1b"))
    assert "vocab_size=" in str(e.value)
    # One check for both backends (data/tokenizer_base.py), only the fix text differs.
    assert Tokenizer.check_compatible is HFTokenizer.check_compatible
    assert "re-prepare" in str(e.value) and "re-prepare" not in HFTokenizer.vocab_fix


def test_sentencepiece_from_dir_names_the_loader_for_other_dirs(tmp_path: Path) -> None:
    """`Tokenizer.from_dir` reads SentencePiece only; its error names `load_tokenizer`."""
    with pytest.raises(TokenizerError, match="load_tokenizer"):
        Tokenizer.from_dir(tmp_path)


def test_bad_vocab_and_empty_corpus() -> None:
    with pytest.raises(TokenizerError, match="too small"):
        Tokenizer.train(["abc"], 100)
    with pytest.raises(TokenizerError, match="empty corpus"):
        Tokenizer.train(["", ""], 1000)


def test_vocab_padding(tok: Tokenizer) -> None:
    # Ids the SentencePiece model does not have decode to nothing; vocab_size is the
    # model-facing size.
    assert tok.sp_vocab_size <= tok.vocab_size
    assert tok.decode([tok.vocab_size - 1] if tok.sp_vocab_size < tok.vocab_size else []) == ""


def test_small_vocab_many_characters() -> None:
    # More distinct characters than a 300-piece vocabulary has room for: training drops the
    # rarest from its sample, and byte fallback still round-trips them.
    text = "".join(chr(0x4E00 + i) for i in range(200)) + "\ndef f(x):\n    return x\n" * 20
    small = Tokenizer.train([text] * 5, 300)
    assert small.sp_vocab_size <= 300
    assert small.decode(small.encode(text)) == text
