"""Hugging Face tokenizer backend (`tokenizer.json`, through the `tokenizers` library).

Why a second backend: public code models (Qwen2.5-Coder, StarCoder2) ship a byte-level BPE
`tokenizer.json`, and their weights only make sense with exactly those ids. `HFTokenizer`
has the same surface as the SentencePiece `Tokenizer` (encode / encode_batch / decode,
`eot_id`, the FIM ids, `special_ids`, `vocab_size`, `fingerprint`, `save`,
`check_compatible`), so the data pipeline, the evaluator, the decoder and the server take
either one; `load_tokenizer` (data/tokenizer_load.py) picks the backend from the files in a
directory.

Sentinels are found by name, per family (`SENTINEL_FAMILIES`: Qwen2.5-Coder's
`<|fim_prefix|>`... and StarCoder's `<fim_prefix>`...). Encoding raw text never produces a
special id: `encode_special_tokens=True` makes the library split a literal "<|fim_prefix|>"
into ordinary pieces, and the pipeline inserts sentinel ids directly, as with SentencePiece.

`vocab_size` is the model's embedding size (from the checkpoint's config.json; Qwen pads
151,665 tokens to 151,936). Ids in [len(tokenizer), vocab_size) are never produced and
decode to "". A tokenizer larger than the embedding is an error.

Round-trip: with a byte-level pre-tokenizer and decoder and no normalizer,
decode(encode(x)) == x for every string. Qwen's own tokenizer.json carries an NFC
normalizer, so there the round trip holds for NFC text only (what the library gives HF).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers

from zen_code_jax.data.tokenizer_base import TokenizerBase, TokenizerError

HF_FILE = "tokenizer.json"  # the Hugging Face format's name
# Files copied along with tokenizer.json when present (chat template, added-token flags).
HF_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")
META_FILE = "zen_tokenizer_meta.json"  # our metadata (model-facing vocab size, fingerprint)

# Role -> spelling, per family of code models. The first family whose FIM names all exist
# in the vocabulary is the tokenizer's family (and names its repository format).
SENTINEL_FAMILIES: dict[str, dict[str, str]] = {
    "qwen2.5": {
        "eot": "<|endoftext|>",
        "fim_prefix": "<|fim_prefix|>",
        "fim_middle": "<|fim_middle|>",
        "fim_suffix": "<|fim_suffix|>",
        "fim_pad": "<|fim_pad|>",
        "repo_name": "<|repo_name|>",
        "file_sep": "<|file_sep|>",
    },
    "starcoder2": {
        "eot": "<|endoftext|>",
        "fim_prefix": "<fim_prefix>",
        "fim_middle": "<fim_middle>",
        "fim_suffix": "<fim_suffix>",
        "fim_pad": "<fim_pad>",
        "repo_name": "<repo_name>",
        "file_sep": "<file_sep>",
    },
}
_REQUIRED = ("eot", "fim_prefix", "fim_middle", "fim_suffix")


def sentinel_family(vocab: dict[str, int]) -> str:
    """The family whose required sentinels are all in `vocab`; raises naming what is missing."""
    for name, roles in SENTINEL_FAMILIES.items():
        if all(roles[r] in vocab for r in _REQUIRED):
            return name
    wanted = {n: [roles[r] for r in _REQUIRED] for n, roles in SENTINEL_FAMILIES.items()}
    raise TokenizerError(
        f"tokenizer.json has no FIM sentinels of a known family {wanted}; use a Qwen2.5-Coder "
        "or StarCoder2 tokenizer, or add these special tokens to it."
    )


class HFTokenizer(TokenizerBase):
    """A `tokenizers.Tokenizer` plus the model-facing vocabulary size."""

    backend = "hf"
    vocab_fix = "Load the tokenizer with the checkpoint's vocab_size (config.json) so both agree."

    def __init__(self, tokenizer_json: str, vocab_size: int | None = None):
        self._json = tokenizer_json
        self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        # Literal sentinel spellings in raw text split into ordinary pieces.
        self._tok.encode_special_tokens = True
        vocab = self._tok.get_vocab(with_added_tokens=True)
        n = max(vocab.values()) + 1 if vocab else 0
        self.sp_vocab_size: int = n  # ids the tokenizer can produce: [0, n)
        self.vocab_size: int = int(vocab_size) if vocab_size else n
        if self.vocab_size < n:
            raise TokenizerError(
                f"tokenizer.json has {n} tokens but the model's embedding has vocab_size "
                f"{self.vocab_size}; use the tokenizer that came with the checkpoint (or a "
                f"checkpoint with vocab_size >= {n})."
            )
        self.family: str = sentinel_family(vocab)
        roles = SENTINEL_FAMILIES[self.family]
        self.sentinels: dict[str, int] = {r: vocab[s] for r, s in roles.items() if s in vocab}
        self.eot_id: int = self.sentinels["eot"]
        self.fim_prefix_id: int = self.sentinels["fim_prefix"]
        self.fim_middle_id: int = self.sentinels["fim_middle"]
        self.fim_suffix_id: int = self.sentinels["fim_suffix"]
        self.fim_pad_id: int = self.sentinels.get("fim_pad", self.eot_id)
        self.pad_id: int = self.fim_pad_id
        self.unk_id: int = -1
        specials = [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]
        self._id_to_special = {vocab[s]: s for s in specials} | {
            i: roles[r] for r, i in self.sentinels.items()
        }
        self.special_ids: tuple[int, ...] = tuple(
            self.sentinels[r]
            for r in ("eot", "fim_prefix", "fim_middle", "fim_suffix", "fim_pad")
            if r in self.sentinels
        )

    def _role_id(self, role: str) -> int:
        if role not in self.sentinels:
            spelling = SENTINEL_FAMILIES[self.family][role]
            raise TokenizerError(
                f"This {self.family} tokenizer has no {spelling!r} token; the repository "
                "formats that need it (data.repo_format='qwen2.5' / 'starcoder2') cannot be "
                "used with it: set data.repo_format='report'."
            )
        return self.sentinels[role]

    @property
    def repo_name_id(self) -> int:
        return self._role_id("repo_name")

    @property
    def file_sep_id(self) -> int:
        return self._role_id("file_sep")

    # ------------------------------------------------------------------ IO
    @classmethod
    def from_dir(cls, in_dir: str | os.PathLike, vocab_size: int | None = None) -> HFTokenizer:
        """Load `tokenizer.json` (+ our metadata if present) from a directory.

        `vocab_size` (the checkpoint's embedding rows) wins over the stored metadata.
        """
        d = Path(in_dir)
        path = d / HF_FILE
        if not path.is_file():
            raise TokenizerError(f"No {HF_FILE} in {d}; pass the HF model or tokenizer directory.")
        meta_path = d / META_FILE
        meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        try:
            tok = cls(path.read_text(encoding="utf-8"), vocab_size or meta.get("vocab_size"))
        except Exception as e:  # noqa: BLE001 - the library's parse errors are opaque
            if isinstance(e, TokenizerError):
                raise
            raise TokenizerError(f"{path} is not a valid tokenizers file ({e}).") from None
        if vocab_size is None and meta.get("fingerprint") not in (None, tok.fingerprint()):
            raise TokenizerError(
                f"Tokenizer at {d} is corrupt: {HF_FILE} does not match the fingerprint in "
                f"{META_FILE}. Re-copy the directory from the run that produced it."
            )
        tok._side_files = {n: (d / n).read_text() for n in HF_SIDE_FILES if (d / n).is_file()}
        return tok

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.json (HF format, loadable by transformers) and our metadata."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / HF_FILE).write_text(self._json, encoding="utf-8")
        for name, text in getattr(self, "_side_files", {}).items():
            (d / name).write_text(text, encoding="utf-8")
        meta = {
            "format_version": 1,
            "type": "hf-tokenizers",
            "family": self.family,
            "vocab_size": self.vocab_size,
            "tokenizer_size": self.sp_vocab_size,
            "special_tokens": {self._id_to_special[i]: i for i in self.special_ids},
            "pad_id": self.pad_id,
            "fingerprint": self.fingerprint(),
        }
        (d / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def fingerprint(self) -> str:
        """sha256 of tokenizer.json as stored and the model-facing vocab size."""
        h = hashlib.sha256(self._json.encode("utf-8"))
        h.update(f"|hf|vocab_size={self.vocab_size}".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of raw text; never produces special ids."""
        return self._tok.encode(text, add_special_tokens=False).ids if text else []

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Encode many texts (the library parallelizes internally; results are identical)."""
        del num_threads
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids if t else [] for e, t in zip(encs, texts)]

    def _decode_run(self, run: list[int]) -> str:
        return self._tok.decode(run, skip_special_tokens=False)

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes token `i` stands for (byte-level BPE: one piece, raw bytes)."""
        piece = self._tok.id_to_token(int(i))
        if piece is None or int(i) in self._id_to_special:
            return b""
        return bytes(_BYTE_DECODER.get(ch, 0) for ch in piece)

    def id_to_piece(self, i: int) -> str:
        """The token's piece as stored in the vocabulary (for debugging and reports)."""
        return self._tok.id_to_token(int(i)) or ""

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(family={self.family}, vocab_size={self.vocab_size}, "
            f"tokens={self.sp_vocab_size}, fingerprint={self.fingerprint()[:12]})"
        )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE pieces."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


def is_hf_tokenizer_dir(path: str | os.PathLike) -> bool:
    """True if `path` holds an HF tokenizer.json (not this project's old metadata file)."""
    p = Path(path) / HF_FILE
    if not p.is_file():
        return False
    with open(p, encoding="utf-8") as f:
        head = f.read(4096)
    # Our pre-rename metadata file had {"format_version", "type": "sentencepiece-bpe", ...}.
    return '"sentencepiece-bpe"' not in head


def repo_format_for(tokenizer: Any) -> str | None:
    """The repository/FIM format a tokenizer's checkpoint was trained with (None: ours)."""
    return getattr(tokenizer, "family", None)


def check_repo_format(tokenizer: Any, configured: str) -> str:
    """The format to use: `configured`, or the tokenizer's own when `configured` is "".

    A checkpoint's tokenizer whose family disagrees with the configured format is an
    error: its weights learned that family's sentinels and layout.
    """
    native = repo_format_for(tokenizer)
    if not configured:
        return native or "report"
    if native is not None and configured != native:
        raise TokenizerError(
            f"data.repo_format={configured!r} but the tokenizer is a {native!r} tokenizer "
            f"(its checkpoint was trained on that layout); set data.repo_format={native!r}."
        )
    return configured
