"""SentencePiece BPE tokenizer for code, with atomic FIM sentinels.

Why these settings (see docs/data_prepare.md): source code must round-trip byte for byte, so
normalization is the identity, whitespace is never collapsed, no dummy prefix is added,
whitespace-only pieces (indentation) are allowed, digits are split, and byte fallback covers
every character that is not in the vocabulary.

Special tokens (`<|endoftext|>`, `<|fim_prefix|>`, `<|fim_middle|>`, `<|fim_suffix|>`,
`<|fim_pad|>`, and the repository-format tokens `<|repo_name|>`, `<|file_sep|>`) are
SentencePiece *control* symbols: they own ids, but encoding raw text never
produces them (user-defined symbols would be matched inside text). A literal "<|fim_prefix|>"
in a source file therefore encodes as ordinary pieces; the pipeline inserts sentinel ids
directly.

One SentencePiece quirk is handled here: the meta symbol U+2581 ("▁") stands for a space
inside SentencePiece, so a literal U+2581 in the input would decode as " ". `encode` emits the
three byte-fallback pieces of its UTF-8 encoding instead, which decode back to U+2581.

`vocab_size` is the size the model's embedding must have. SentencePiece may learn fewer
pieces on a small corpus (`sp_vocab_size`); ids in [sp_vocab_size, vocab_size) are never
produced and decode to "" (as in Qwen's padded 151,936 vocabulary).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from zen_code_jax.data.tokenizer_base import TokenizerBase, TokenizerError

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_PAD = "<|fim_pad|>"
REPO_NAME = "<|repo_name|>"  # repository formats (data/repo_format.py): Qwen2.5-Coder's
FILE_SEP = "<|file_sep|>"  # spellings; StarCoder2's <repo_name>/<file_sep> play the same roles
SPECIAL_TOKENS = (ENDOFTEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP)
# A tokenizer trained before the repository tokens existed still loads (file mode needs only
# these); asking it for a repository token raises, naming the fix (re-prepare).
REQUIRED_TOKENS = SPECIAL_TOKENS[:5]

MODEL_FILE = "tokenizer.model"
# Our metadata file. It was called tokenizer.json, which is the Hugging Face tokenizer
# format's name (data/hf_tokenizer.py), so it was renamed; old run dirs still load.
META_FILE = "zen_tokenizer_meta.json"
LEGACY_META_FILE = "tokenizer.json"
_FORMAT_VERSION = 1

# unk, pad, the specials, 256 byte pieces: the smallest vocabulary that can hold anything.
MIN_VOCAB_SIZE = 2 + len(SPECIAL_TOKENS) + 256 + 8
_META_SPACE = "\u2581"
# Training chunks: SentencePiece trains on "sentences"; long files are cut at line ends into
# chunks of about this many characters (the newlines stay inside, so pieces learn "\n    ").
_CHUNK_CHARS = 2048
_MAX_SENTENCE_LENGTH = 8192
# SentencePiece's BPE result depends on its thread count: fixed, never taken from the host.
TRAIN_THREADS = 4


def _training_chunks(texts: Iterable[str]) -> Iterable[str]:
    """Cut texts into line-aligned chunks of at most ~_CHUNK_CHARS characters."""
    for text in texts:
        if not text:
            continue
        start = 0
        n = len(text)
        while start < n:
            end = min(n, start + _CHUNK_CHARS)
            if end < n:
                nl = text.rfind("\n", start, end)
                if nl > start:
                    end = nl + 1
            chunk = text[start:end]
            start = end
            # SentencePiece measures max_sentence_length in bytes.
            if len(chunk.encode("utf-8")) <= _MAX_SENTENCE_LENGTH:
                yield chunk


def _limit_characters(chunks: list[str], room: int) -> list[str]:
    """SentencePiece gives every kept character a vocabulary slot and keeps at least 98% of
    character occurrences, which fails on a small vocabulary over a text with many distinct
    characters. Drop the rarest characters from the *training* text so at most `room - 1`
    remain; encoding still handles them (byte fallback), so nothing is lost."""
    counts: collections.Counter = collections.Counter()
    for c in chunks:
        counts.update(c)
    if len(counts) < room:
        return chunks
    keep = {ch for ch, _ in counts.most_common(max(1, room - 1))}
    table = {ord(ch): None for ch in counts if ch not in keep}
    return [t for t in (c.translate(table) for c in chunks) if t]


class Tokenizer(TokenizerBase):
    """A trained SentencePiece model plus the model-facing vocabulary size."""

    backend = "sentencepiece"
    vocab_fix = (
        "Set model.vocab_size={tokenizer} (or re-prepare the data with vocab_size={model}) "
        "so both agree."
    )

    def __init__(self, model_proto: bytes, vocab_size: int | None = None):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.sp_vocab_size: int = self._sp.get_piece_size()
        self.vocab_size: int = int(vocab_size) if vocab_size else self.sp_vocab_size
        if self.vocab_size < self.sp_vocab_size:
            raise TokenizerError(
                f"vocab_size {self.vocab_size} is smaller than the SentencePiece model's "
                f"{self.sp_vocab_size} pieces; pass vocab_size >= {self.sp_vocab_size}."
            )
        ids = {}
        for tok in SPECIAL_TOKENS:
            i = self._sp.piece_to_id(tok)
            if i == self._sp.unk_id() or not self._sp.is_control(i):
                if tok not in REQUIRED_TOKENS:
                    continue
                raise TokenizerError(
                    f"SentencePiece model has no control symbol {tok!r}; train it with "
                    "Tokenizer.train so the FIM sentinels exist as atomic ids."
                )
            ids[tok] = i
        self.eot_id: int = ids[ENDOFTEXT]
        self.fim_prefix_id: int = ids[FIM_PREFIX]
        self.fim_middle_id: int = ids[FIM_MIDDLE]
        self.fim_suffix_id: int = ids[FIM_SUFFIX]
        self.fim_pad_id: int = ids[FIM_PAD]
        self._ids = dict(ids)
        self.pad_id: int = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.fim_pad_id
        self.unk_id: int = self._sp.unk_id()
        self.special_ids: tuple[int, ...] = tuple(ids[t] for t in SPECIAL_TOKENS if t in ids)
        self._id_to_special = {i: t for t, i in ids.items()}
        # Ids that decode to nothing: unk, pad (the pad id is never produced by encode).
        self._silent_ids = {self.unk_id, self._sp.pad_id()} - {-1}
        meta_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode("utf-8")]
        self._meta_space_ids = meta_bytes

    def special_id(self, token: str) -> int:
        """The atomic id of a special token (e.g. `FILE_SEP`); raises naming the fix."""
        if token not in self._ids:
            raise TokenizerError(
                f"This tokenizer has no {token!r} id (trained before it existed); re-prepare "
                "the corpus (delete WORKDIR/cache/<key>/) so the tokenizer is retrained."
            )
        return self._ids[token]

    @property
    def repo_name_id(self) -> int:
        return self.special_id(REPO_NAME)

    @property
    def file_sep_id(self) -> int:
        return self.special_id(FILE_SEP)

    # ------------------------------------------------------------------ training / IO
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        out_dir: str | os.PathLike | None = None,
        *,
        max_chunks: int = 200_000,
        num_threads: int = TRAIN_THREADS,
        seed: int = 0,
    ) -> Tokenizer:
        """Train a BPE tokenizer on `texts` and (if `out_dir`) save it there.

        Texts are cut into line-aligned chunks; if there are more than `max_chunks`, a
        deterministic sample (by `seed`) is used, which caps the training time. The trained
        model depends on `num_threads` (SentencePiece breaks ties per thread), so keep the
        default for reproducible tokenizers. On a small
        corpus SentencePiece may learn fewer than `vocab_size` pieces; `vocab_size` is still
        the model-facing size (unused ids are never produced).
        """
        vocab_size = int(vocab_size)
        if vocab_size < MIN_VOCAB_SIZE:
            raise TokenizerError(
                f"vocab_size {vocab_size} is too small: byte fallback needs 256 byte pieces "
                f"plus {2 + len(SPECIAL_TOKENS)} special ids; use vocab_size >= {MIN_VOCAB_SIZE}."
            )
        chunks = list(_training_chunks(texts))
        if not chunks:
            raise TokenizerError(
                "Cannot train a tokenizer on an empty corpus: no non-empty texts were given. "
                "Check the data source (data.source / data.path) and the filters."
            )
        if len(chunks) > max_chunks:
            rng = random.Random(seed)
            idx = sorted(rng.sample(range(len(chunks)), max_chunks))
            chunks = [chunks[i] for i in idx]
        chunks = _limit_characters(chunks, vocab_size - (2 + len(SPECIAL_TOKENS) + 256))
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(chunks),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus may support fewer pieces; pad (see above)
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=0.9999,
            max_sentence_length=_MAX_SENTENCE_LENGTH,
            input_sentence_size=0,  # we sampled deterministically above
            shuffle_input_sentence=False,
            unk_id=0,
            pad_id=1,
            bos_id=-1,
            eos_id=-1,
            control_symbols=list(SPECIAL_TOKENS),
            num_threads=num_threads,
            minloglevel=2,
        )
        tok = cls(buf.getvalue(), vocab_size)
        if out_dir is not None:
            tok.save(out_dir)
        return tok

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write `tokenizer.model` (SentencePiece proto) and `META_FILE` (metadata)."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / MODEL_FILE).write_bytes(self._proto)
        meta = {
            "format_version": _FORMAT_VERSION,
            "type": "sentencepiece-bpe",
            "vocab_size": self.vocab_size,
            "sp_vocab_size": self.sp_vocab_size,
            "special_tokens": dict(self._ids),
            "pad_id": self.pad_id,
            "fingerprint": self.fingerprint(),
        }
        (d / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dir(cls, in_dir: str | os.PathLike, vocab_size: int | None = None) -> Tokenizer:
        """Load the SentencePiece tokenizer that `save` wrote to `in_dir`.

        Checks the stored fingerprint unless `vocab_size` (the model's embedding rows)
        overrides the stored size. For a directory of either backend, use
        `zen_code_jax.data.tokenizer_load.load_tokenizer`.
        """
        d = Path(in_dir)
        model = d / MODEL_FILE
        if not model.is_file():
            raise TokenizerError(
                f"No {MODEL_FILE} (SentencePiece) in {d}; pass the directory that "
                "Tokenizer.save / prepare_corpus wrote (load_tokenizer also reads HF ones)."
            )
        meta_path = d / META_FILE
        if not meta_path.is_file():
            meta_path = d / LEGACY_META_FILE  # run dirs written before the rename
        meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        tok = cls(model.read_bytes(), vocab_size or meta.get("vocab_size"))
        if not vocab_size and "fingerprint" in meta and meta["fingerprint"] != tok.fingerprint():
            raise TokenizerError(
                f"Tokenizer at {d} is corrupt: {MODEL_FILE} does not match the fingerprint in "
                f"{META_FILE}. Re-copy both files together from the run that produced them."
            )
        return tok

    def fingerprint(self) -> str:
        """sha256 of the serialized SentencePiece model and the model-facing vocab size."""
        h = hashlib.sha256(self._proto)
        h.update(f"|vocab_size={self.vocab_size}".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of raw text; never produces special ids."""
        if _META_SPACE not in text:
            return self._sp.encode(text) if text else []
        out: list[int] = []
        parts = text.split(_META_SPACE)
        for k, part in enumerate(parts):
            if k:
                out.extend(self._meta_space_ids)
            if part:
                out.extend(self._sp.encode(part))
        return out

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Encode many texts (one SentencePiece call for those without U+2581)."""
        texts = list(texts)
        plain = [i for i, t in enumerate(texts) if _META_SPACE not in t]
        out: list[list[int]] = [[] for _ in texts]
        if plain:
            enc = self._sp.encode([texts[i] for i in plain], num_threads=num_threads)
            for i, ids in zip(plain, enc):
                out[i] = ids
        for i, t in enumerate(texts):
            if _META_SPACE in t:
                out[i] = self.encode(t)
        return out

    def _decode_run(self, run: list[int]) -> str:
        return self._sp.decode(run)

    def id_to_piece(self, i: int) -> str:
        """The SentencePiece piece of id `i` (for debugging and reports)."""
        return self._sp.id_to_piece(int(i)) if 0 <= int(i) < self.sp_vocab_size else ""

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, sp_vocab_size={self.sp_vocab_size}, "
            f"fingerprint={self.fingerprint()[:12]})"
        )
