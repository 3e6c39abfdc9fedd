"""zen_code_jax.data: sources, filters, dedup, tokenizer, prepared corpus, Grain pipeline.

Public names are imported lazily so `import zen_code_jax.data` stays cheap and submodules
(written by different owners) never import each other through this file.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Tokenizer": "zen_code_jax.data.tokenizer",
    "TokenizerError": "zen_code_jax.data.tokenizer_base",
    "load_tokenizer": "zen_code_jax.data.tokenizer_load",
    "SPECIAL_TOKENS": "zen_code_jax.data.tokenizer",
    "prepare_corpus": "zen_code_jax.data.prepare",
    "Corpus": "zen_code_jax.data.corpus",
    "Manifest": "zen_code_jax.data.corpus",
    "Mixture": "zen_code_jax.data.corpus",
    "PreparedCorpus": "zen_code_jax.data.corpus",
    "RecordSource": "zen_code_jax.data.corpus",
    "SPLITS": "zen_code_jax.data.corpus",
    "mixture_weights": "zen_code_jax.data.corpus",
    "Batch": "zen_code_jax.data.batch",
    "CorpusError": "zen_code_jax.data.sources",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zen_code_jax.data' has no attribute {name!r}")
