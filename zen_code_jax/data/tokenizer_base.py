"""What the two tokenizer backends share: the error type and the vocabulary check.

Why a module of its own: the SentencePiece backend (`data/tokenizer.py`) and the Hugging
Face backend (`data/hf_tokenizer.py`) both raise `TokenizerError` and both check a model's
embedding size the same way, while the loader that picks a backend from a directory's files
(`data/tokenizer_load.py`) imports both backends. With this module below both backends and
the loader above them, the imports run one way (`tests/test_layering.py` fails on any
import cycle); before, `tokenizer.py` and `hf_tokenizer.py` imported each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar


class TokenizerError(ValueError):
    """A tokenizer/model mismatch or a bad tokenizer directory."""


class TokenizerBase:
    """The surface both backends share; the data pipeline, evaluator and server take either.

    A backend sets the attributes below in `__init__` and states `vocab_fix`, the remedy
    its users have when the model's embedding and the tokenizer disagree (a SentencePiece
    tokenizer is ours to re-prepare; an HF tokenizer comes with its checkpoint).
    """

    backend: ClassVar[str]
    # How to make the sizes agree; `{tokenizer}` and `{model}` are filled in.
    vocab_fix: ClassVar[str]

    vocab_size: int  # the model-facing size: the embedding rows
    sp_vocab_size: int  # ids the tokenizer can produce: [0, sp_vocab_size)
    eot_id: int
    fim_prefix_id: int
    fim_middle_id: int
    fim_suffix_id: int
    fim_pad_id: int
    pad_id: int
    unk_id: int
    special_ids: tuple[int, ...]
    _id_to_special: dict[int, str]  # id -> spelling of every special id
    _silent_ids: frozenset[int] | set[int] = frozenset()  # produced, yet decode to "" (unk, pad)

    def _decode_run(self, run: list[int]) -> str:
        """The backend's text of ordinary ids (no special ids among them)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; special ids render as their spelling unless `skip_special`.

        Ids in [sp_vocab_size, vocab_size) (padding rows, never produced) and `_silent_ids`
        decode to "". Runs of ordinary ids are decoded together (byte pieces join up).
        """
        pieces: list[str] = []
        run: list[int] = []
        n = self.sp_vocab_size
        silent = self._silent_ids
        for i in ids:
            i = int(i)
            if i in self._id_to_special:
                if run:
                    pieces.append(self._decode_run(run))
                    run = []
                if not skip_special:
                    pieces.append(self._id_to_special[i])
            elif 0 <= i < n and i not in silent:
                run.append(i)
        if run:
            pieces.append(self._decode_run(run))
        return "".join(pieces)

    def check_compatible(self, model_cfg: Any) -> None:
        """Raise if the model's embedding size (a ModelConfig or an int) differs from ours."""
        mv = int(getattr(model_cfg, "vocab_size", model_cfg))
        if mv != self.vocab_size:
            raise TokenizerError(
                f"Tokenizer/model vocabulary mismatch: the tokenizer has vocab_size "
                f"{self.vocab_size} but the model has vocab_size {mv}. "
                + self.vocab_fix.format(tokenizer=self.vocab_size, model=mv)
            )
