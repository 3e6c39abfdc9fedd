"""Load a tokenizer directory of either backend, picking the backend from its files.

`tokenizer.model` -> the SentencePiece `Tokenizer` (ours: prepared corpora, trained runs);
an HF `tokenizer.json` -> `HFTokenizer` (imported checkpoints). Every caller that reads a
tokenizer directory (run dirs, prepared corpora, `--tokenizer` flags, HF directories) goes
through `load_tokenizer`, so a run imported from Hugging Face loads like one we trained.

Why here and not in a backend: the loader needs both backends, and each backend needs only
`tokenizer_base`; this module sits above both, so no two tokenizer modules import each other.
"""

from __future__ import annotations

import os
from pathlib import Path

from zen_code_jax.data.hf_tokenizer import HF_FILE, HFTokenizer, is_hf_tokenizer_dir
from zen_code_jax.data.tokenizer import MODEL_FILE, Tokenizer
from zen_code_jax.data.tokenizer_base import TokenizerError

AnyTokenizer = Tokenizer | HFTokenizer


def load_tokenizer(in_dir: str | os.PathLike, vocab_size: int | None = None) -> AnyTokenizer:
    """The tokenizer saved in `in_dir`, of whichever backend its files show.

    `vocab_size`: the model's embedding rows (a checkpoint's config), which wins over the
    size stored with the tokenizer; without it the stored fingerprint is checked.
    """
    d = Path(in_dir)
    if (d / MODEL_FILE).is_file():
        return Tokenizer.from_dir(d, vocab_size)
    if is_hf_tokenizer_dir(d):
        return HFTokenizer.from_dir(d, vocab_size)
    raise TokenizerError(
        f"No tokenizer at {d}: neither {MODEL_FILE} (SentencePiece) nor an HF {HF_FILE} is "
        "there. Pass the directory that Tokenizer.save / prepare_corpus wrote, or an HF "
        "model directory."
    )
